"""The scripts' shared plumbing: oneDNN on unless the environment says otherwise."""

import ast
import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = ("from milenas_tf import cli\n"
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
  imported = [alias.name for node in tree.body if isinstance(node, ast.ImportFrom)
              and node.module == "milenas_tf" for alias in node.names]
  assert imported and imported[0] == "cli", imported
