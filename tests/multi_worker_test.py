"""Runs on two worker processes (`MultiWorkerMirroredStrategy` on 127.0.0.1).

Every run goes through `core.launch` and `tests/multi_worker_child.py` (a tiny
search or training through the run driver): the workers end with the same
variables as each other and as one process on the same global batches, for a
first-order and a second-order search; only the chief writes into the output
directory; a killed or hung worker stops the other with one line; a restart resumes
exactly; checkpoints cross between one process and two workers.
"""

import io
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from milenas_tf.core import launch
from milenas_tf.search import config as search_config

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multi_worker_child.py")
TIMEOUT_S = 600


def environment(tmp):
  # TensorFlow's own kernels, whatever an earlier test left in the environment; the
  # workers' temporary directories under `tmp`, to see them removed.
  os.makedirs(tmp, exist_ok=True)
  return {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", "TMPDIR": str(tmp)}


def results(output: str) -> dict:
  return {r["worker"]: r for r in (json.loads(line.split("RESULT ", 1)[1])
                                   for line in output.splitlines() if "RESULT " in line)}


def run_workers(options: dict, tmp, grace_s: float = launch.GRACE_S
                ) -> tuple[int, str, float]:
  """Two workers; their exit status, output and the time they stopped."""
  output = io.StringIO()
  status = launch.launch([sys.executable, CHILD, json.dumps(options)], 2,
                         env=environment(tmp), output=output, grace_s=grace_s,
                         timeout_s=TIMEOUT_S)
  return status, output.getvalue(), time.time()


def start_one(options: dict, tmp) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, CHILD, json.dumps(options)],
                          env=environment(tmp), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> str:
  try:
    output, _ = process.communicate(timeout=TIMEOUT_S)
  finally:
    process.kill()
  assert process.returncode == 0, output[-3000:]
  return output


def load(path):
  with np.load(path) as arrays:
    return {k: arrays[k] for k in arrays.files}


@pytest.fixture(scope="module")
def searches(tmp_path_factory):
  """One process and two workers: the same tiny search, in float64.

  float64, so that the comparison sees the computation rather than float32 rounding,
  which Adam amplifies on near-zero alpha gradients (distribution_test shows that
  case on two replicas of one process).
  """
  root = tmp_path_factory.mktemp("searches")
  base = {"kind": "search", "epochs": 2, "float64": True}
  one = start_one({**base, "output_dir": str(root / "one"), "record": str(root / "one_")},
                  root / "tmp_one")
  two = {**base, "output_dir": str(root / "two"), "record": str(root / "two_")}
  status, output, _ = run_workers(two, root / "tmp_two")
  assert status == 0, output[-3000:]
  return {"root": root, "two": results(output), "one": results(finish(one))}


def test_workers_end_with_the_same_alpha_and_weights(searches):
  root = searches["root"]
  chief, other = load(root / "two_0.npz"), load(root / "two_1.npz")
  assert chief.keys() == other.keys()
  for key in chief:
    np.testing.assert_array_equal(chief[key], other[key])
  assert searches["two"][0]["genotype"] == searches["two"][1]["genotype"]
  assert searches["two"][1]["output_dir"] == str(root / "two")  # reported as the chief's


def test_two_workers_follow_one_process_on_the_same_global_batches(searches):
  root = searches["root"]
  one, two = load(root / "one_0.npz"), load(root / "two_0.npz")
  start = load(root / "one_0_start.npz")
  np.testing.assert_array_equal(load(root / "two_0_start.npz")["w0"], start["w0"])
  np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-12)
  # float64 rounding apart (measured 1e-13 of a step; 2e-15 relative for w). Other
  # batches, a missing all-reduce or a part computed in float32 (batch norm's global
  # statistics were, once: 3e-7 in the first loss) move alpha by parts of a step.
  assert_same_search(one, two, start)
  weights = [k for k in one if k.startswith("w")]
  assert max(float(np.abs(one[k] - start[k]).max()) for k in weights if k in start) > 1e-3
  assert searches["one"][0]["genotype"] == searches["two"][0]["genotype"]


def assert_same_search(one: dict, two: dict, start: dict) -> None:
  """Alpha moved by Adam's first steps, and both runs' alpha and w agree to float64
  rounding."""
  step = search_config.default_config().arch_learning_rate  # Adam's first moves
  alphas = [k for k in one if k.startswith("a")]
  assert max(float(np.abs(one[k] - start[k]).max()) for k in alphas) > step / 2
  assert max(float(np.abs(one[k] - two[k]).max()) for k in alphas) < 1e-8 * step
  for k in (k for k in one if k.startswith("w")):
    np.testing.assert_allclose(two[k], one[k], rtol=1e-9, atol=1e-9 * np.abs(one[k]).max())


@pytest.fixture(scope="module")
def second_order(tmp_path_factory):
  """One `milenas_2nd` step in one process and on two workers, float64, step op by op
  (traced inline under several replicas, the second-order step takes many minutes and
  gigabytes to build; the operations and their all-reduces are the same)."""
  root = tmp_path_factory.mktemp("second_order")
  base = {"kind": "search", "method": "milenas_2nd", "epochs": 1, "limit": 32,
          "float64": True, "eager": True}
  one = start_one({**base, "output_dir": str(root / "one"), "record": str(root / "one_")},
                  root / "tmp_one")
  status, output, _ = run_workers(
      {**base, "output_dir": str(root / "two"), "record": str(root / "two_")},
      root / "tmp_two")
  assert status == 0, output[-3000:]
  return {"root": root, "two": results(output), "one": results(finish(one))}


def test_a_second_order_step_on_two_workers_equals_one_process(second_order):
  # The virtual step, the finite differences and the restore assign each worker's w
  # the same global values: alpha, w and the genotype as one process's, to float64
  # rounding (measured: alpha 1e-15 of its step, w within 1e-13).
  root = second_order["root"]
  one, two, start = (load(root / f"{name}.npz") for name in ("one_0", "two_0", "one_0_start"))
  assert_same_search(one, two, start)
  np.testing.assert_array_equal(two["w0"], load(root / "two_1.npz")["w0"])
  assert second_order["one"][0]["genotype"] == second_order["two"][0]["genotype"]
  assert second_order["two"][0]["genotype"] == second_order["two"][1]["genotype"]


def test_only_the_chief_writes_and_the_others_leave_nothing(searches):
  root = searches["root"]
  files = sorted(os.listdir(root / "two"))
  assert {"config.json", "genotype.json", "epochs.jsonl", "alphas.npz", "checkpoints",
          "logs"} <= set(files)
  log = [json.loads(line) for line in (root / "two" / "epochs.jsonl").read_text().splitlines()]
  assert [entry["epoch"] for entry in log] == [1, 2]  # one writer
  assert os.listdir(root / "tmp_two") == []  # the other worker's scratch is gone


@pytest.fixture(scope="module")
def trainings(tmp_path_factory):
  """Checkpoints crossing between one process and two workers; two workers run whole,
  and with one killed, then restarted."""
  root = tmp_path_factory.mktemp("trainings")
  tmp = root / "tmp"
  base = {"kind": "train", "epochs": 2}
  run = lambda name: {**base, "output_dir": str(root / name), "record": str(root / f"{name}_")}
  one = start_one({**run("to_two"), "stop_after": 1}, tmp)
  status, output, _ = run_workers({**run("to_one"), "stop_after": 1}, tmp)
  assert status == 0, output[-3000:]
  finish(one)
  one = start_one(run("to_one"), tmp)
  status, output, _ = run_workers(run("to_two"), tmp)
  assert status == 0, output[-3000:]
  crossed = {"one": results(finish(one)), "two": results(output)}
  status, output, _ = run_workers(run("whole"), tmp)
  assert status == 0, output[-3000:]
  status, killed_output, stopped = run_workers(
      {**run("killed"), "die_at_epoch": 2, "die_worker": 1}, tmp)
  died = float((root / "killed_died").read_text())
  restart_status, restart_output, _ = run_workers(run("killed"), tmp)
  return {"root": root, **crossed, "whole": results(output), "status": status,
          "killed_output": killed_output, "survivor_s": stopped - died,
          "restart_status": restart_status, "restart_output": restart_output,
          "restart": results(restart_output)}


def test_one_process_resumes_what_two_workers_wrote_and_back(trainings):
  assert trainings["one"][0]["resumed_after"] == 1
  assert {r["resumed_after"] for r in trainings["two"].values()} == {1}
  assert trainings["two"][0]["top1"] == trainings["two"][1]["top1"]
  for name in ("to_one", "to_two"):
    log = (trainings["root"] / name / "epochs.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1, 2]


def test_a_killed_worker_stops_the_other_with_one_line(trainings):
  assert trainings["status"] != 0
  assert trainings["survivor_s"] < 60
  chief = [line for line in trainings["killed_output"].splitlines()
           if line.startswith("[worker 0] error:")]
  assert len(chief) == 1 and "restart every worker" in chief[0], chief
  assert 'File "' not in chief[0], chief  # the cause, not where the op was made
  assert "Traceback" not in trainings["killed_output"]


def test_a_worker_that_hangs_alive_stops_the_other_with_one_line(tmp_path):
  # Worker 1's main thread sleeps: the process lives on and sends its heartbeats, so the
  # chief's watchdog, seeing no step finish for worker_timeout_s, stops the run.
  status, output, stopped = run_workers(
      {"kind": "train", "epochs": 2, "output_dir": str(tmp_path / "run"),
       "record": str(tmp_path / "hung_"), "die_at_epoch": 2, "die_worker": 1,
       "hang": True, "worker_timeout_s": 30}, tmp_path / "tmp",
      grace_s=1)  # the hung worker is killed a second after the chief fails
  assert status != 0
  assert (tmp_path / "hung_died").exists(), output[-5000:]  # the run got that far
  hung = float((tmp_path / "hung_died").read_text())
  assert 30 < stopped - hung < 90, stopped - hung
  chief = [line for line in output.splitlines() if line.startswith("[worker 0] error:")]
  assert len(chief) == 1, output[-3000:]
  assert "no step finished in 30 s (config.worker_timeout_s)" in chief[0], chief
  assert "restart every worker" in chief[0], chief
  assert "Traceback" not in output
  log = (tmp_path / "run" / "epochs.jsonl").read_text().splitlines()
  assert [json.loads(line)["epoch"] for line in log] == [1]  # epoch 1 kept to resume


def test_restarted_workers_resume_and_end_as_the_uninterrupted_run(trainings):
  root = trainings["root"]
  assert trainings["restart_status"] == 0, trainings["restart_output"][-3000:]
  assert {r["resumed_after"] for r in trainings["restart"].values()} == {1}
  assert trainings["restart"][0]["top1"] == trainings["whole"][0]["top1"]
  resumed, uninterrupted = load(root / "killed_0.npz"), load(root / "whole_0.npz")
  for key in resumed:
    if key != "losses":  # the resumed run logged epoch 2 only
      np.testing.assert_array_equal(resumed[key], uninterrupted[key])


def test_workers_without_a_cluster_description_are_refused(tmp_path):
  env = {**environment(tmp_path), "TF_CONFIG": "{not json"}
  proc = subprocess.run(
      [sys.executable, os.path.join(os.path.dirname(CHILD), "..", "bin", "train.py"),
       "--config.distribution=multi_worker", f"--output_dir={tmp_path / 'run'}"],
      env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith("error: TF_CONFIG=")
  env.pop("TF_CONFIG")
  proc = subprocess.run(proc.args, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and "TF_CONFIG environment variable" in proc.stderr
