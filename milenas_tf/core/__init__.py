"""What every role shares: errors and validation, the run driver and its run
directory, atomic file writes, the shared callbacks, distribution strategies,
precision, graph options, optimisers and schedules, and the scripts' plumbing.

Imports nothing else of `milenas_tf`.
"""
