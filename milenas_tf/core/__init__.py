"""What every role shares: errors and validation, the run driver and its run
directory (with its lock, `lock.py`), atomic file writes, the shared callbacks (the
divergence guard, `divergence.py`, among them), distribution strategies, precision,
graph options, optimisers and schedules, the scripts' plumbing and the local launcher of
multi-worker runs (`launch.py`).

Imports nothing else of `milenas_tf`.
"""
