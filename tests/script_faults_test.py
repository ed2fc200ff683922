"""Faults of the disk, of permissions and of input files end a script with one line:
`error: <reason>: <path>; <fix>` and exit status 2, never a traceback."""

import ctypes
import errno
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from milenas_tf.core import cli
from milenas_tf.core import files
from milenas_tf.core.errors import UserInputError
from milenas_tf.serving import client as serving_client

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
TINY_SEARCH = ["--config.limit=128", "--config.epochs=1", "--config.init_channels=4",
               "--config.num_cells=3", "--config.batch_size=32"]


def run_script(name, *args, preexec_fn=None, timeout=300):
  return subprocess.run([sys.executable, os.path.join(ROOT, "bin", name), *args],
                        capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=ENV,
                        preexec_fn=preexec_fn)


def error_line(proc):
  """The one `error:` line of a script that failed with status 2."""
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1, proc.stderr[-3000:]
  return lines[0]


# cli.run and its one-line OSError.

@pytest.mark.parametrize("error,line", [
    (OSError(errno.ENOSPC, "No space left on device", "/runs/a/ckpt.h5"),
     "No space left on device: /runs/a/ckpt.h5; free some space, or choose a directory on "
     "another disk, then rerun (a run resumes from its last finished epoch)."),
    (PermissionError(errno.EACCES, "Permission denied", "/runs/a"),
     "Permission denied: /runs/a; change its permissions, or choose a path you may write to."),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/run"),
     "Read-only file system: /mnt/ro/run; choose a path on a writable disk."),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/runs/file/run"),
     "Not a directory: /runs/file/run; a part of the path is a file, not a directory; "
     "choose another path."),
    (OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b"),
     "Invalid cross-device link: /a -> /b; check the path, the disk and the permissions, "
     "then rerun."),
    (OSError("Unable to synchronously create file\n(more detail)"),
     "Unable to synchronously create file; check the path, the disk and the permissions, "
     "then rerun."),
])
def test_os_errors_read_as_reason_path_and_fix(error, line):
  assert cli.os_error_line(error) == line


TF_LOG = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl|To enable the)")
RAISER = textwrap.dedent("""
    import errno, sys
    from milenas_tf.core import cli
    from milenas_tf.core.errors import UserInputError

    def main(argv):
      kind = argv[1]
      if kind == "os":
        raise OSError(errno.ENOSPC, "No space left on device", "/full/run/ckpt.weights.h5")
      if kind == "user":
        raise UserInputError("bad input; fix it.")
      if kind == "tensorflow":
        import tensorflow as tf
        raise tf.errors.ResourceExhaustedError(None, None, "Out of disk writing x.pb\\nmore")
      if kind == "collective":
        import tensorflow as tf
        raise tf.errors.DeadlineExceededError(None, None, (
            "Graph execution error:\\n\\nDetected at node CollectiveReduceV2 defined at "
            "(most recent call last):\\n  File \\"x.py\\", line 9, in <module>\\n\\n"
            "{{function_node __wrapped__CollectiveReduceV2}} Collective ops is aborted by: "
            "no step finished in 9 s\\nmore"))
      if kind == "bug":
        raise ZeroDivisionError("a bug")
      raise KeyboardInterrupt

    cli.run(main)
""")


@pytest.mark.parametrize("kind,status,message", [
    ("os", 2, "error: No space left on device: /full/run/ckpt.weights.h5; free some space"),
    ("user", 2, "error: bad input; fix it."),
    ("tensorflow", 2, "error: Out of disk writing x.pb; free disk space or memory"),
    ("collective", 2, "error: a worker of the cluster stopped or does not answer "
     "(DeadlineExceededError: Collective ops is aborted by: no step finished in 9 s); "
     "restart every worker"),
    ("interrupt", 130, "Interrupted; rerun the same command to resume"),
])
def test_cli_run_ends_in_one_line(kind, status, message):
  proc = subprocess.run([sys.executable, "-c", RAISER, kind], capture_output=True, text=True,
                        timeout=120, cwd=ROOT)
  assert proc.returncode == status, proc.stderr
  # One line, besides TensorFlow's own start-up log lines.
  lines = [l for l in proc.stderr.strip().splitlines() if not TF_LOG.match(l)]
  assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
  assert "Traceback" not in proc.stderr


def test_cli_run_keeps_the_traceback_of_other_errors():
  proc = subprocess.run([sys.executable, "-c", RAISER, "bug"], capture_output=True,
                        text=True, timeout=120, cwd=ROOT)
  assert proc.returncode == 1
  assert "Traceback" in proc.stderr and "ZeroDivisionError: a bug" in proc.stderr


# The output directory: a file, under a file, under a read-only parent, on a full disk.

def test_search_output_dir_that_is_a_file(tmp_path):
  path = tmp_path / "taken"
  path.write_text("mine")
  line = error_line(run_script("search.py", f"--output_dir={path}", *TINY_SEARCH))
  assert line == f"error: {path} is a file, not a directory; choose another --output_dir."
  assert path.read_text() == "mine"
  line = error_line(run_script("search.py", f"--output_dir={path / 'run'}", *TINY_SEARCH))
  assert line == (f"error: Not a directory: {path / 'run'}; a part of the path is a file, "
                  "not a directory; choose another path.")


_PR_CAPBSET_DROP, _CAP_DAC_OVERRIDE = 24, 1


def _without_dac_override():
  """In the child before exec: drop the capability that lets root write anywhere."""
  libc = ctypes.CDLL(None, use_errno=True)
  if libc.prctl(_PR_CAPBSET_DROP, _CAP_DAC_OVERRIDE, 0, 0, 0) != 0:
    raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _permission_bits_stop(directory, preexec_fn):
  """Whether a process started with `preexec_fn` is refused writing into `directory`."""
  probe = f"open({os.path.join(str(directory), 'probe')!r}, 'w')"
  try:
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, preexec_fn=preexec_fn)
  except subprocess.SubprocessError:
    return False
  return proc.returncode != 0 and "PermissionError" in proc.stderr


def test_search_output_dir_under_a_read_only_parent(tmp_path):
  parent = tmp_path / "read_only"
  parent.mkdir()
  parent.chmod(0o555)
  try:
    # Root writes through permission bits (CAP_DAC_OVERRIDE): run the script without
    # that capability, as the user whose directory it is.
    preexec_fn = _without_dac_override if os.geteuid() == 0 else None
    if not _permission_bits_stop(parent, preexec_fn):
      pytest.skip("permission bits do not stop this process's children from writing (root "
                  "whose CAP_DAC_OVERRIDE cannot be dropped here)")
    out = parent / "run"
    line = error_line(run_script("search.py", f"--output_dir={out}", *TINY_SEARCH,
                                 preexec_fn=preexec_fn))
    assert line == (f"error: Permission denied: {out}; change its permissions, or choose a "
                    "path you may write to.")
    assert os.listdir(parent) == []
  finally:
    parent.chmod(0o755)


def test_a_weights_file_that_does_not_fit_is_refused_before_hdf5_writes(
    tmp_path, monkeypatch):
  model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1000)])
  path = tmp_path / "ckpt" / "ckpt.weights.h5"
  needed = files.weights_file_bytes(model, path)
  assert needed >= 3 * 4 * (3 * 1000 + 1000)
  usage = shutil.disk_usage(tmp_path)
  monkeypatch.setattr(files.shutil, "disk_usage",
                      lambda _: usage._replace(free=needed - 1))
  with pytest.raises(OSError) as refused:
    files.save_weights_atomic(model, path)
  assert refused.value.errno == errno.ENOSPC
  assert refused.value.filename == str(path)
  assert os.listdir(path.parent) == []  # HDF5 never started
  monkeypatch.setattr(files.shutil, "disk_usage", lambda _: usage._replace(free=needed))
  files.save_weights_atomic(model, path)
  assert os.listdir(path.parent) == ["ckpt.weights.h5"]


def test_training_on_a_full_disk_ends_in_one_line(tmp_path):
  """A real full disk: a 256 KiB tmpfs in a private mount namespace (needs root)."""
  mount_point = tmp_path / "small_disk"
  mount_point.mkdir()
  probe = subprocess.run(["unshare", "-m", "sh", "-c",
                          f"mount -t tmpfs -o size=256k tmpfs {shlex.quote(str(mount_point))}"],
                         capture_output=True, text=True, timeout=60, check=False)
  if probe.returncode != 0:
    pytest.skip(f"cannot mount a small tmpfs here: {probe.stderr.strip()[:200]}")
  out = mount_point / "run"
  train = [sys.executable, os.path.join(ROOT, "bin", "train.py"), f"--output_dir={out}",
           "--config.limit=64", "--config.epochs=1", "--config.batch_size=32",
           "--config.init_channels=6", "--config.num_cells=3"]
  command = (f"mount -t tmpfs -o size=256k tmpfs {shlex.quote(str(mount_point))} && exec "
             + shlex.join(train))
  proc = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True,
                        text=True, timeout=600, cwd=ROOT, env=ENV)
  line = error_line(proc)
  # The first weights file of the epoch's end: the best weights, then the checkpoint.
  assert re.fullmatch(
      r"error: No space left on device \([0-9.]+ MiB free, about [0-9.]+ MiB needed\): "
      + re.escape(str(out)) + r"/best/best\.weights\.h5; free some space, or choose a "
      r"directory on another disk, then rerun \(a run resumes from its last finished "
      r"epoch\)\.", line), line


# bin/predict.py's inputs.

@pytest.mark.parametrize("shape", [(0, 28, 28, 1), (2, 0, 28, 1)])
def test_an_empty_npy_batch_is_a_one_line_error(tmp_path, shape):
  path = str(tmp_path / "empty.npy")
  np.save(path, np.zeros(shape, np.uint8))
  with pytest.raises(UserInputError) as refused:
    serving_client.load_inputs([path])
  assert str(refused.value) == (
      f"{path} holds no pixels (shape {shape}); give a batch of at least one image "
      "[batch, height, width, channels] with batch, height and width >= 1.")


def test_predict_script_refuses_an_empty_batch_in_one_line(tmp_path):
  path = str(tmp_path / "empty.npy")
  np.save(path, np.zeros((0, 28, 28, 1), np.uint8))
  line = error_line(run_script("predict.py", f"--model={tmp_path / 'no_model'}", path))
  assert line.startswith(f"error: {path} holds no pixels (shape (0, 28, 28, 1));")
