"""One run per output directory: an exclusive lock held for the life of a run.

`DirectoryLock(directory)` takes `<directory>/.lock` with `fcntl.flock` and writes
the holder (what it runs, process id, host, start time) into it, so that a second run on the
same directory is refused with a line naming the process that holds it. The
kernel releases a `flock` when its process ends, however it ends: a lock file
left by a killed run (`kill -9`, a crash, a lost machine's reboot) does not hold
anything, and the next run takes it.

The lock is released, and its file removed, on every exit of the `with` block.
A directory the lock created is removed too when nothing else was written into
it, so that a run refused or failing before it writes anything leaves no trace.

Processes on one machine always see each other's locks; on a network file
system, only if it supports `flock` (NFSv4 does; some FUSE file systems do not).

Imports nothing of `milenas_tf` but its errors: a test's helper process imports
it without TensorFlow.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket

from milenas_tf.core.errors import UserInputError

LOCK_FILE = ".lock"  # in the locked directory; not part of the run's files


class DirectoryLock:
  """An exclusive lock on a directory, as a context manager.

  Args:
    directory: the directory to lock (created if missing).
    what: what holds it, for messages ("search", "training", "run").

  Raises:
    UserInputError: on entry, if another process holds the lock or `directory`
      is a file.
    OSError: on entry, if the directory or the lock file cannot be created.
  """

  def __init__(self, directory: str, what: str = "run"):
    self.directory = directory
    self.what = what
    self.path = os.path.join(directory, LOCK_FILE)
    self._fd: int | None = None
    self._created_directory = False

  @property
  def held(self) -> bool:
    """Whether this object holds the lock."""
    return self._fd is not None

  def acquire(self) -> None:
    """Takes the lock without waiting; see the class for what it raises."""
    if self.held:
      raise RuntimeError(f"{self.path} is already held by this DirectoryLock.")
    if os.path.exists(self.directory) and not os.path.isdir(self.directory):
      raise UserInputError(f"{self.directory} is a file, not a directory; choose "
                           "another --output_dir.")
    self._created_directory = not os.path.isdir(self.directory)
    try:
      self._fd = self._take()
    except BaseException:
      self._remove_directory_if_made()
      raise

  def _take(self) -> int:
    """Opens, locks and fills the lock file; returns its descriptor."""
    while True:
      os.makedirs(self.directory, exist_ok=True)
      try:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
      except FileNotFoundError:  # a releasing holder removed the directory it had made
        continue
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = _describe_holder(fd)
        os.close(fd)
        raise UserInputError(f"{self.directory} is in use by {holder}; wait for it to "
                             "finish, or choose another --output_dir.") from None
      except BaseException:
        os.close(fd)
        raise
      # The previous holder removes the file before it unlocks: a lock taken on a file
      # that is no longer at the path locks nothing, so open the path again.
      if _is_file_at(fd, self.path):
        break
      os.close(fd)
    try:
      record = {"what": self.what, "pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
      os.ftruncate(fd, 0)
      os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
    except BaseException:
      _remove_then_unlock(fd, self.path)
      raise
    return fd

  def release(self) -> None:
    """Removes the lock file and unlocks; removes the directory if the lock made it and
    it is empty. Does nothing if the lock is not held."""
    if not self.held:
      return
    fd, self._fd = self._fd, None
    _remove_then_unlock(fd, self.path)
    self._remove_directory_if_made()

  def _remove_directory_if_made(self) -> None:
    """Removes the directory if this lock created it and it is empty."""
    if self._created_directory:
      try:
        os.rmdir(self.directory)  # only if empty: a run that wrote nothing leaves nothing
      except OSError:
        pass

  def __enter__(self) -> DirectoryLock:
    self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()


def _is_file_at(fd: int, path: str) -> bool:
  """Whether the open file `fd` is the file now at `path`."""
  try:
    return os.path.samestat(os.fstat(fd), os.stat(path))
  except FileNotFoundError:
    return False


def _remove_then_unlock(fd: int, path: str) -> None:
  """Removes the lock file (while still holding it, see `acquire`), then unlocks."""
  try:
    if _is_file_at(fd, path):
      os.remove(path)
  except OSError:
    pass  # a read-only or vanished directory: the kernel still drops the lock below
  finally:
    os.close(fd)  # closing the last descriptor releases the flock


def _describe_holder(fd: int) -> str:
  """Who holds the lock, from the lock file's record: "a search (process 12 on host h
  since t)"."""
  try:
    record = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
    text = f"process {int(record['pid'])} on host {record['host']}"
    if record.get("started"):
      text += f" since {record['started']}"
    return f"a {record.get('what') or 'run'} ({text})"
  except (OSError, ValueError, KeyError, TypeError, AttributeError):
    return "another process (one that has not yet written its id)"
