"""The local launcher: TF_CONFIG per worker, exit statuses, teardown, Ctrl-C."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from milenas_tf.core import launch
from milenas_tf.core.errors import UserInputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python(code: str) -> list[str]:
  return [sys.executable, "-c", code]


def test_free_ports_are_distinct_and_bindable():
  ports = launch.free_ports(4)
  assert len(set(ports)) == 4
  import socket  # pylint: disable=g-import-not-at-top
  for port in ports:
    with socket.socket() as sock:
      sock.bind(("127.0.0.1", port))


def test_each_worker_gets_the_cluster_and_its_index():
  output = io.StringIO()
  status = launch.launch(python("import os; print(os.environ['TF_CONFIG'])"), 3,
                         output=output, timeout_s=60)
  assert status == 0
  configs = {}
  for line in output.getvalue().splitlines():
    prefix, text = line.split("] ", 1)
    configs[int(prefix.split()[-1])] = json.loads(text)
  assert sorted(configs) == [0, 1, 2]
  workers = configs[0]["cluster"]["worker"]
  assert len(set(workers)) == 3 and all(w.startswith("127.0.0.1:") for w in workers)
  for index, config in configs.items():
    assert config["cluster"]["worker"] == workers
    assert config["task"] == {"type": "worker", "index": index}


def test_a_failed_worker_fails_the_launch_and_the_others_are_stopped():
  # Worker 1 fails; worker 0 would run for a minute: it is killed after the grace.
  code = ("import json, os, sys, time\n"
          "index = json.loads(os.environ['TF_CONFIG'])['task']['index']\n"
          "sys.exit(3) if index == 1 else time.sleep(60)")
  start = time.monotonic()
  status = launch.launch(python(code), 2, output=io.StringIO(), grace_s=1.0, timeout_s=60)
  assert status == 3
  assert time.monotonic() - start < 30


def test_a_timeout_stops_every_worker():
  start = time.monotonic()
  status = launch.launch(python("import time; time.sleep(60)"), 2, output=io.StringIO(),
                         grace_s=1.0, timeout_s=1.0)
  assert status == 124 and time.monotonic() - start < 30


def test_bad_arguments_are_one_line():
  with pytest.raises(UserInputError, match="Give the command"):
    launch.launch([], 2)
  with pytest.raises(UserInputError, match="at least 1"):
    launch.launch(python("pass"), 0)


def test_ctrl_c_reaches_every_worker_and_nothing_is_left(tmp_path):
  # Each worker writes its pid, then waits; on SIGINT it records it and exits 130.
  code = ("import os, signal, sys, time, json\n"
          f"d = {str(tmp_path)!r}\n"
          "i = json.loads(os.environ['TF_CONFIG'])['task']['index']\n"
          "def stop(*_):\n"
          "  open(os.path.join(d, f'stopped{i}'), 'w').close(); sys.exit(130)\n"
          "signal.signal(signal.SIGINT, stop)\n"
          "open(os.path.join(d, f'pid{i}'), 'w').write(str(os.getpid()))\n"
          "time.sleep(60)\n")
  launcher = subprocess.Popen(
      [sys.executable, os.path.join(ROOT, "bin", "launch.py"), "--workers=2", "--",
       sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True)
  try:
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"pid{i}").exists() for i in range(2)):
      assert time.monotonic() < deadline and launcher.poll() is None
      time.sleep(0.1)
    time.sleep(0.5)
    launcher.send_signal(signal.SIGINT)
    launcher.wait(timeout=60)
  finally:
    launcher.kill()
  assert launcher.returncode == 130
  assert all((tmp_path / f"stopped{i}").exists() for i in range(2))
  for i in range(2):
    pid = int((tmp_path / f"pid{i}").read_text())
    with pytest.raises(ProcessLookupError):
      os.kill(pid, 0)
