"""Starting the workers of a multi-worker run on this machine.

`MultiWorkerMirroredStrategy` runs one process per worker, each with a `TF_CONFIG`
that lists every worker's address and says which one it is:

    {"cluster": {"worker": ["127.0.0.1:41503", "127.0.0.1:38211"]},
     "task": {"type": "worker", "index": 0}}

Worker 0 is the chief. `launch(command, workers=N)` picks N free ports on
127.0.0.1, starts N copies of `command` with their `TF_CONFIG`, prefixes each line
they print with "[worker i]", and waits. Ctrl-C (or SIGTERM) is passed on to every
worker, which stops at once and can be resumed. When a worker fails, the others
get `GRACE_S` seconds to stop on their own (they fail at their next collective
operation) and are then killed; nothing is left running.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Sequence, TextIO

from milenas_tf.core.errors import UserInputError

# Seconds the other workers have to stop by themselves after one fails or after
# Ctrl-C, before they are killed.
GRACE_S = 90.0


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
  """`count` distinct ports on `host` that no process listens on now."""
  sockets = []
  try:
    for _ in range(count):
      sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
      sock.bind((host, 0))
      sockets.append(sock)
    return [sock.getsockname()[1] for sock in sockets]
  finally:
    for sock in sockets:
      sock.close()


def tf_config(addresses: Sequence[str], index: int) -> str:
  """The `TF_CONFIG` of worker `index` of a cluster of workers at `addresses`."""
  return json.dumps({"cluster": {"worker": list(addresses)},
                     "task": {"type": "worker", "index": index}})


def _relay(stream, prefix: str, output: TextIO, lock: threading.Lock) -> None:
  for line in iter(stream.readline, ""):
    with lock:
      output.write(f"{prefix}{line}")
      output.flush()
  stream.close()


def _signal_all(processes: list[subprocess.Popen], signum: int) -> None:
  for process in processes:
    if process.poll() is None:
      try:
        os.killpg(process.pid, signum)
      except ProcessLookupError:
        pass


def launch(command: Sequence[str], workers: int, *, env: dict[str, str] | None = None,
           output: TextIO | None = None, grace_s: float = GRACE_S,
           timeout_s: float | None = None) -> int:
  """Runs `command` as `workers` workers of one cluster on 127.0.0.1; waits for them.

  Args:
    command: the program and its arguments; a first element ending in ".py" runs
      with this Python.
    workers: how many workers (processes) to start.
    env: their environment (this process's by default); `TF_CONFIG` is added.
    output: where their prefixed output goes (stdout by default).
    grace_s: seconds the others have to stop after a worker fails or Ctrl-C.
    timeout_s: if set, the workers are stopped after this many seconds.

  Returns:
    0 when every worker succeeded; else the exit status of the first to fail
    (130 after Ctrl-C, 124 after `timeout_s`).

  Raises:
    UserInputError: for no command or fewer than one worker.
  """
  command = list(command)
  if not command:
    raise UserInputError("Give the command the workers run after --, e.g. "
                         "bin/launch.py --workers=2 -- bin/train.py --output_dir=runs/x")
  if workers < 1:
    raise UserInputError(f"--workers must be at least 1, got {workers}.")
  if command[0].endswith(".py"):
    command.insert(0, sys.executable)
  output = output or sys.stdout
  addresses = [f"127.0.0.1:{port}" for port in free_ports(workers)]
  base = dict(os.environ if env is None else env)
  lock = threading.Lock()
  processes, relays = [], []
  for index in range(workers):
    process = subprocess.Popen(
        command, env={**base, "TF_CONFIG": tf_config(addresses, index)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)  # its own group: signals reach what it starts
    processes.append(process)
    relay = threading.Thread(target=_relay, daemon=True,
                             args=(process.stdout, f"[worker {index}] ", output, lock))
    relay.start()
    relays.append(relay)

  stopping = {"status": None, "since": None}

  def stop(status: int, signum: int) -> None:
    if stopping["status"] is None:
      stopping["status"], stopping["since"] = status, time.monotonic()
      _signal_all(processes, signum)

  previous = {s: signal.signal(s, lambda signum, _: stop(130, signal.SIGINT))
              for s in (signal.SIGINT, signal.SIGTERM)
              if threading.current_thread() is threading.main_thread()}
  start = time.monotonic()
  try:
    while [p.poll() for p in processes].count(None):
      failed = [p.returncode for p in processes if p.returncode not in (None, 0)]
      if failed and stopping["since"] is None:
        stopping["status"], stopping["since"] = failed[0], time.monotonic()
      if timeout_s is not None and time.monotonic() - start > timeout_s:
        stop(124, signal.SIGINT)
      if stopping["since"] is not None and time.monotonic() - stopping["since"] > grace_s:
        _signal_all(processes, signal.SIGKILL)
      time.sleep(0.1)
  finally:
    _signal_all(processes, signal.SIGKILL)  # only if this function itself failed
    for process in processes:
      process.wait()
    for relay in relays:
      relay.join(timeout=5)
    for signum, handler in previous.items():
      signal.signal(signum, handler)
  if stopping["status"] is not None:
    return stopping["status"]
  failed = [p.returncode for p in processes if p.returncode != 0]
  return failed[0] if failed else 0
