"""One run per output directory: the lock refuses a second holder, naming it; a lock
left by a killed process does not block; every exit releases it; the run driver holds
it for the life of a run."""

import json
import os
import selectors
import signal
import subprocess
import sys
import textwrap

import ml_collections
import pytest

from milenas_tf.core import driver
from milenas_tf.core import lock
from milenas_tf.core import run_directory
from milenas_tf.core.errors import UserInputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 60  # bound on every wait for a helper process
HOLD_S = 600  # how long a lock holder lives if no test kills it

# Takes the lock, says so on stdout, then holds it until killed (or for HOLD_S, so a
# helper that the test fails to kill still ends).
HOLDER = textwrap.dedent("""
    import sys, time
    from milenas_tf.core import lock
    with lock.DirectoryLock(sys.argv[1], "search"):
      print("held", flush=True)
      time.sleep(float(sys.argv[2]))
""")


def start_holder(directory):
  """A process holding `directory`'s lock; returns it once the lock is taken."""
  proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory), str(HOLD_S)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=ROOT)
  try:
    line = _read_line(proc)
    assert line == "held", f"the lock holder said {line!r}"
  except BaseException:
    _kill(proc)
    raise
  return proc


def _read_line(proc):
  """The helper's first stdout line, waiting at most TIMEOUT_S."""
  with selectors.DefaultSelector() as selector:
    selector.register(proc.stdout, selectors.EVENT_READ)
    if not selector.select(TIMEOUT_S):
      raise AssertionError(f"the lock holder said nothing in {TIMEOUT_S} s")
  return proc.stdout.readline().strip()


def _kill(proc):
  if proc.poll() is None:
    proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=TIMEOUT_S)
  proc.stdout.close()
  proc.stderr.close()


def test_a_held_directory_is_refused_in_one_line_naming_the_holder(tmp_path):
  proc = start_holder(tmp_path)
  try:
    with pytest.raises(UserInputError) as refused:
      lock.DirectoryLock(str(tmp_path), "training").acquire()
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path} is in use by a search (process {proc.pid} on "
                              "host ")
    assert "wait for it to finish, or choose another --output_dir." in message
    with open(tmp_path / lock.LOCK_FILE) as f:  # the refused attempt changed nothing
      assert json.load(f)["pid"] == proc.pid
  finally:
    _kill(proc)


def test_a_second_search_script_on_a_held_directory_ends_in_one_line(tmp_path):
  proc = start_holder(tmp_path)
  try:
    script = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bin", "search.py"), f"--output_dir={tmp_path}",
         "--config.limit=128", "--config.epochs=1"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.poll() is None  # the holder still runs
  finally:
    _kill(proc)
  assert script.returncode == 2, script.stderr[-3000:]
  assert "Traceback" not in script.stderr
  lines = [l for l in script.stderr.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1, script.stderr[-3000:]
  assert lines[0].startswith(f"error: {tmp_path} is in use by a search (process {proc.pid} "
                             "on host ")
  assert lines[0].endswith("; wait for it to finish, or choose another --output_dir.")
  assert os.listdir(tmp_path) == [lock.LOCK_FILE]  # the refused run wrote nothing


def test_a_lock_left_by_a_killed_process_is_taken(tmp_path):
  proc = start_holder(tmp_path)
  _kill(proc)  # SIGKILL: no cleanup ran, the lock file stays
  assert os.path.exists(tmp_path / lock.LOCK_FILE)
  with lock.DirectoryLock(str(tmp_path)) as taken:
    assert taken.held
    with open(tmp_path / lock.LOCK_FILE) as f:
      assert json.load(f)["pid"] == os.getpid()
  assert not os.path.exists(tmp_path / lock.LOCK_FILE)


def test_the_lock_is_released_when_the_block_raises(tmp_path):
  with pytest.raises(RuntimeError, match="inside"):
    with lock.DirectoryLock(str(tmp_path)):
      assert os.path.exists(tmp_path / lock.LOCK_FILE)
      raise RuntimeError("inside")
  assert os.listdir(tmp_path) == []
  with lock.DirectoryLock(str(tmp_path)):  # and can be taken again
    with pytest.raises(UserInputError, match=f"in use by a run \\(process {os.getpid()} "):
      lock.DirectoryLock(str(tmp_path)).acquire()  # a second holder, even in-process


def test_a_directory_the_lock_made_goes_when_nothing_was_written(tmp_path):
  empty, used = tmp_path / "empty" / "run", tmp_path / "used"
  with lock.DirectoryLock(str(empty)):
    assert os.listdir(empty) == [lock.LOCK_FILE]
  assert not empty.exists()
  with lock.DirectoryLock(str(used)):
    (used / "config.json").write_text("{}")
  assert os.listdir(used) == ["config.json"]


def test_a_file_in_the_way_is_refused(tmp_path):
  (tmp_path / "file").write_text("mine")
  with pytest.raises(UserInputError, match="is a file, not a directory; choose another "
                                           "--output_dir"):
    lock.DirectoryLock(str(tmp_path / "file")).acquire()
  assert (tmp_path / "file").read_text() == "mine"


# Takes and releases the lock many times; inside, claims a marker file that only one
# process may hold, so two holders at once (a lock taken on a removed file) would fail.
CONTENDER = textwrap.dedent("""
    import os, sys
    from milenas_tf.core import lock
    from milenas_tf.core.errors import UserInputError
    directory, marker, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    taken = 0
    while taken < rounds:
      try:
        with lock.DirectoryLock(directory):
          fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
          os.close(fd)
          os.remove(marker)
          taken += 1
      except UserInputError:
        pass
""")


def test_processes_taking_and_releasing_the_lock_never_overlap(tmp_path):
  directory, marker = tmp_path / "run", tmp_path / "inside"
  procs = [subprocess.Popen([sys.executable, "-c", CONTENDER, str(directory), str(marker),
                             "100"], stderr=subprocess.PIPE, text=True, cwd=ROOT)
           for _ in range(3)]
  try:
    errors = [p.communicate(timeout=TIMEOUT_S)[1] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait(timeout=TIMEOUT_S)
  assert [p.returncode for p in procs] == [0, 0, 0], errors
  assert not directory.exists() or os.listdir(directory) == []  # no lock file left


def test_a_lock_file_alone_counts_as_an_empty_directory(tmp_path):
  (tmp_path / lock.LOCK_FILE).write_text('{"pid": 1, "host": "gone"}')
  assert run_directory.check_output_dir(str(tmp_path), {"a": 1}, "search") is False
  (tmp_path / "notes.txt").write_text("mine")
  with pytest.raises(UserInputError, match="not empty and holds no search"):
    run_directory.check_output_dir(str(tmp_path), {"a": 1}, "search")


class _Stop(Exception):
  pass


class _ProbeTask(driver.Task):
  """A task that checks, while it runs, that its directory is locked; then stops."""

  kind = "search"

  @classmethod
  def default_config(cls):
    return ml_collections.ConfigDict(dict(remapping="auto", graph_optimizer="light",
                                          distribution="default", batch_size=2, seed=0,
                                          probe=""))

  def validate(self):
    pass

  def build_inputs(self, epoch):
    with pytest.raises(UserInputError, match="is in use by a search"):
      lock.DirectoryLock(self.config.probe, "search").acquire()
    raise _Stop

  def build_model(self, inputs):
    raise AssertionError("not reached")

  def finish(self, model, inputs, progress):
    raise AssertionError("not reached")


def test_the_run_driver_holds_the_lock_for_the_run_and_releases_it(tmp_path):
  out = tmp_path / "run"
  config = _ProbeTask.default_config()
  config.probe = str(out)
  with pytest.raises(_Stop):
    driver.run_experiment(_ProbeTask(config), str(out))
  assert not out.exists()  # released, and the directory it made for the lock removed
