"""The scripts' shared plumbing: oneDNN on unless the environment says otherwise."""

import ast
import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = ("from milenas_tf.core import cli\n"
         "from tensorflow.python.util import _pywrap_util_port\n"
         "print(_pywrap_util_port.IsMklEnabled())")


@pytest.mark.parametrize("setting,enabled", [(None, "True"), ("0", "False")])
def test_cli_turns_onednn_on_unless_told_otherwise(setting, enabled):
  env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
  if setting is not None:
    env["TF_ENABLE_ONEDNN_OPTS"] = setting
  proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                        text=True, cwd=ROOT, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split()[-1] == enabled


@pytest.mark.parametrize("script", sorted(glob.glob(os.path.join(ROOT, "bin", "*.py"))))
def test_scripts_import_cli_before_the_library(script):
  """Every other module of the package may import TensorFlow."""
  with open(script) as f:
    tree = ast.parse(f.read())
  imported = [(node.module, alias.name) for node in tree.body
              if isinstance(node, ast.ImportFrom) and node.module.startswith("milenas_tf")
              for alias in node.names]
  assert imported and imported[0] == ("milenas_tf.core", "cli"), imported


def test_scripts_need_no_path_edits():
  for script in glob.glob(os.path.join(ROOT, "bin", "*.py")):
    with open(script) as f:
      text = f.read()
    assert "sys.path" not in text, script
    assert text.startswith("#!/usr/bin/env python3\n"), script
    assert os.access(script, os.X_OK), script


def run_script(name, *args, cwd=None):
  return subprocess.run([sys.executable, os.path.join(ROOT, "bin", name), *args],
                        capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.mark.parametrize("args,message", [
    (["--config=configs/no_such_file.py"],
     "error: configuration file configs/no_such_file.py does not exist; pass one of the "
     "files of configs/"),
    (["--config.no_such_field=3"],
     "error: --config.no_such_field: the configuration has no field 'no_such_field'"),
    (["--config.epochs=three"], "error: flag --config.epochs=three: invalid literal"),
    (["--config.learning_rate=-1"], "error: config.learning_rate must be > 0, got -1.0."),
])
def test_bad_configuration_flags_are_one_line_errors(tmp_path, args, message):
  proc = run_script("search.py", f"--output_dir={tmp_path / 'run'}", *args, cwd=ROOT)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and lines[0].startswith(message), proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert not os.path.exists(tmp_path / "run")


def test_installed_package_runs_its_scripts_with_the_installed_configs(tmp_path):
  """A wheel installed in a fresh environment: its scripts run from anywhere and find
  their default configuration where the package installed it."""
  wheel_dir, env = tmp_path / "wheel", tmp_path / "env"
  # The installed package must be the one imported, whatever the caller's path says.
  clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                  "--no-build-isolation", "-w", str(wheel_dir), ROOT],
                 check=True, capture_output=True, timeout=300, cwd=tmp_path)
  subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(env)],
                 check=True, capture_output=True, timeout=300)
  python = str(env / "bin" / "python")
  subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps",
                  *glob.glob(str(wheel_dir / "*.whl"))],
                 check=True, capture_output=True, timeout=300, env=clean)
  configs = sorted(os.path.basename(p) for p in
                   glob.glob(str(env / "share" / "milenas_tf" / "configs" / "*.py")))
  assert configs == sorted(os.path.basename(p)
                           for p in glob.glob(os.path.join(ROOT, "configs", "*.py")))
  # The default search config is found (its epochs overridden to a refused value), and
  # the package imported is the installed one, not this source tree.
  proc = subprocess.run([str(env / "bin" / "search.py"), "--config.epochs=0",
                         f"--output_dir={tmp_path / 'run'}"],
                        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=clean)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: config.epochs must be a positive integer, got 0.")
  where = subprocess.run([python, "-c", "import milenas_tf; print(milenas_tf.__file__)"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env=clean)
  assert where.stdout.strip().startswith(str(env)), where.stdout
  for script in glob.glob(os.path.join(ROOT, "bin", "*.py")):
    assert os.access(env / "bin" / os.path.basename(script), os.X_OK), script
