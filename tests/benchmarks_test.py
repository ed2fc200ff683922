"""bin/benchmark.py prints one JSON object per configuration, measured in a fresh process."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = {"benchmark", "config", "method", "order", "first_step_s", "step_s", "images_per_s",
        "peak_memory_mb"}


def run(*flags):
  return subprocess.run([sys.executable, os.path.join(ROOT, "bin", "benchmark.py"), *flags],
                        capture_output=True, text=True, timeout=600)


def test_prints_the_figures_of_each_configuration():
  proc = run("--configs=tiny", "--orders=fused", "--steps=2")
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
  assert len(lines) == 1
  result = lines[0]
  assert KEYS <= set(result), result
  assert (result["config"], result["method"], result["order"]) == ("tiny", "milenas", "fused")
  assert result["first_step_s"] > result["step_s"] > 0
  assert result["images_per_s"] == pytest.approx(8 / result["step_s"], rel=1e-2)
  assert result["peak_memory_mb"] > 100  # a process holding TensorFlow


def test_unknown_configuration_is_refused_before_running():
  proc = run("--configs=huge")
  assert proc.returncode == 2
  assert "error: Unknown benchmark configuration 'huge'" in proc.stderr
