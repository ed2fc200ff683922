"""bin/benchmark.py prints one JSON object per configuration, measured in a fresh process."""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from milenas_tf.benchmarks import jobs as benchmark_jobs
from milenas_tf.benchmarks import runner as benchmark_runner
from milenas_tf.core.errors import UserInputError

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
  assert result["graph_ops"] > 1000  # a search network, its gradients and the updates
  assert result["round"] == 0


def test_traced_ops_counts_each_called_function_once():
  inner = tf.function(lambda x: tf.nn.relu(x) * 2.0)
  ops = benchmark_jobs._traced_ops(lambda x: inner(inner(x)) + 1.0, tf.ones([3]))
  # Outer: placeholder, two calls, constant, add, identity; inner (traced once; its
  # argument is part of its signature): relu, constant, mul, identity.
  assert ops == 6 + 4


def test_unknown_configuration_is_refused_before_running():
  proc = run("--configs=huge")
  assert proc.returncode == 2
  assert "error: Unknown benchmark configuration 'huge'" in proc.stderr


def test_second_order_methods_get_one_job_per_hessian():
  jobs = benchmark_runner.search_jobs(["tiny"], ["milenas", "darts_2nd"], ["reference"], 2,
                                      ["finite_difference", "exact"])
  assert [(j["method"], j["hessian"]) for j in jobs] == [
      ("milenas", None), ("darts_2nd", "finite_difference"), ("darts_2nd", "exact")]
  with pytest.raises(UserInputError, match="Unknown hessian 'newton'"):
    benchmark_runner.search_jobs(["tiny"], ["darts_2nd"], ["reference"], 2, ["newton"])


def test_search_jobs_on_several_devices():
  jobs = benchmark_runner.search_jobs(["tiny"], ["milenas", "milenas_2nd"], ["fused"], 2,
                                      devices=["1", "2"])
  # Second-order methods assign the weights: one device only.
  assert [(j["method"], j["devices"]) for j in jobs] == [
      ("milenas", 1), ("milenas_2nd", 1), ("milenas", 2)]
  with pytest.raises(UserInputError, match="devices=3 must be positive and divide the "
                     "batch 8 of 'tiny'"):
    benchmark_runner.search_jobs(["tiny"], ["milenas"], ["fused"], 2, devices=[3])
  with pytest.raises(UserInputError, match="second-order methods run on one device"):
    benchmark_runner.search_jobs(["tiny"], ["darts_2nd"], ["fused"], 2, devices=[2])


def test_search_jobs_on_several_workers():
  jobs = benchmark_runner.search_jobs(["tiny"], ["milenas", "milenas_2nd"], ["fused"], 2,
                                      workers=["1", "2"])
  # Each worker count twice: one cluster, and independent processes; first order only.
  assert [(j["method"], j.get("workers", 1), j.get("communicate")) for j in jobs] == [
      ("milenas", 1, None), ("milenas_2nd", 1, None), ("milenas", 2, True),
      ("milenas", 2, False)]
  with pytest.raises(UserInputError, match="workers=3 must be positive and divide the "
                     "batch 8 of 'tiny'"):
    benchmark_runner.search_jobs(["tiny"], ["milenas"], ["fused"], 2, workers=[3])


def test_independent_workers_step_on_their_share_of_the_batch():
  job = dict(config="tiny", method="milenas", order="fused", steps=2, hessian=None,
             devices=1, workers=2, communicate=False)
  # Two processes at once, one result for the job.
  result, = benchmark_runner.run([job])
  assert "error" not in result, result
  assert (result["workers"], result["communicate"], result["replicas"]) == (2, False, 1)
  assert (result["batch_size"], result["process_batch_size"]) == (8, 4)
  assert result["step_s"] > 0
  assert result["images_per_s"] == pytest.approx(8 / result["step_s"], rel=1e-2)


def test_ratios_are_to_milenas_of_the_same_configuration_and_order():
  results = [
      dict(config="paper", order="reference", method="milenas", first_step_s=100.0,
           step_s=20.0, peak_memory_mb=4000.0),
      dict(config="paper", order="reference", method="darts_2nd", first_step_s=150.0,
           step_s=50.0, peak_memory_mb=5000.0),
      dict(config="paper", order="fused", method="darts_2nd", first_step_s=1.0,
           step_s=1.0, peak_memory_mb=1.0),
  ]
  out = list(benchmark_runner.with_ratios(results))
  assert out[0]["step_s_vs_milenas"] == 1.0
  assert (out[1]["first_step_s_vs_milenas"], out[1]["step_s_vs_milenas"],
          out[1]["peak_memory_mb_vs_milenas"]) == (1.5, 2.5, 1.25)
  assert "step_s_vs_milenas" not in out[2]  # no milenas result in the fused order
  # Another batch-norm setting is another baseline.
  milenas, darts = ({k: v for k, v in r.items() if "_vs_" not in k} for r in results[:2])
  out = list(benchmark_runner.with_ratios([
      dict(milenas, sync_batch_norm="on"), dict(darts, sync_batch_norm="off"),
      dict(milenas, sync_batch_norm="off")]))
  assert "step_s_vs_milenas" not in out[1] and out[2]["step_s_vs_milenas"] == 1.0


def test_rounds_repeat_the_jobs_and_take_ratios_within_their_round():
  jobs = benchmark_runner.in_rounds([dict(method="milenas"), dict(method="darts_2nd")], 2)
  assert [(j["round"], j["method"]) for j in jobs] == [
      (0, "milenas"), (0, "darts_2nd"), (1, "milenas"), (1, "darts_2nd")]
  results = [dict(config="paper", order="reference", method=method, round=r,
                  first_step_s=10.0, step_s=step, peak_memory_mb=100.0)
             for r, method, step in [(0, "milenas", 8.0), (0, "darts_2nd", 20.0),
                                     (1, "milenas", 10.0), (1, "darts_2nd", 20.0)]]
  out = list(benchmark_runner.with_ratios(results))
  assert [o["step_s_vs_milenas"] for o in out] == [1.0, 2.5, 1.0, 2.0]
  for rounds in (0, -1, 1.5, True):
    with pytest.raises(UserInputError, match="rounds must be a positive integer"):
      benchmark_runner.in_rounds(jobs, rounds)
  proc = run("--configs=tiny", "--rounds=0")
  assert proc.returncode == 2
  assert "error: rounds must be a positive integer, got 0." in proc.stderr


def test_training_benchmark_reports_step_and_pipeline():
  proc = run("--configs=", "--train_configs=tiny", "--steps=2", "--devices=2",
             "--onednn=off", "--remapping=on")
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
  assert len(lines) == 1
  result = lines[0]
  assert (result["benchmark"], result["config"]) == ("train_step", "tiny")
  assert (result["devices"], result["replicas"], result["onednn"]) == (2, 2, "off")
  assert (result["remapping"], result["remapping_on"]) == ("on", True)
  assert {"first_step_s", "step_s", "images_per_s", "peak_memory_mb",
          "pipeline_images_per_s"} <= set(result)
  assert result["first_step_s"] > result["step_s"] > 0
  assert result["pipeline_vs_step"] == pytest.approx(
      result["pipeline_images_per_s"] / result["images_per_s"], rel=0.02)
  with pytest.raises(UserInputError, match="Unknown training benchmark configuration"):
    benchmark_runner.train_jobs(["mnist"], 2)
  with pytest.raises(UserInputError, match="devices=3 must be positive and divide"):
    benchmark_runner.train_jobs(["tiny"], 2, devices=["3"])


def test_serving_benchmark_reports_latency_of_both_runtimes():
  proc = run("--configs=", "--serving_configs=tiny", "--serving_batches=4",
             "--serving_seconds=1")
  assert proc.returncode == 0, proc.stderr[-2000:]
  (result,) = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
  assert (result["benchmark"], result["config"], result["batch_size"]) == ("serving", "tiny", 4)
  for runtime in ("saved_model", "keras"):
    p50, p99 = result[f"{runtime}_p50_ms"], result[f"{runtime}_p99_ms"]
    assert 0 < p50 <= p99
    assert result[f"{runtime}_calls"] >= 10  # ten rounds, at least one call each
    # Images over the summed latencies, which cover the one second of timed calls.
    assert 0 < result[f"{runtime}_images_per_s"] <= 1.05 * 4 * result[f"{runtime}_calls"]
  assert result["saved_model_p50_vs_keras"] == pytest.approx(
      result["saved_model_p50_ms"] / result["keras_p50_ms"], rel=0.01)
  with pytest.raises(UserInputError, match="Unknown serving benchmark configuration"):
    benchmark_runner.serving_jobs(["mnist"])
  with pytest.raises(UserInputError, match="serving batch size must be a positive integer, got 0"):
    benchmark_runner.serving_jobs(["tiny"], batch_sizes=["0"])
  with pytest.raises(UserInputError, match=r"batch sizes must be integers, got \['x'\]"):
    benchmark_runner.serving_jobs(["tiny"], batch_sizes=["x"])


def test_jobs_repeat_per_setting():
  jobs = benchmark_runner.with_settings(benchmark_runner.train_jobs(["tiny"], 2, devices=[1, 2]),
                                        "onednn", ["on", "off"])
  assert [(j["onednn"], j["devices"]) for j in jobs] == [
      ("on", 1), ("on", 2), ("off", 1), ("off", 2)]
  jobs = benchmark_runner.with_settings(jobs[:1], "remapping", ["off", "on"])
  assert [(j["remapping"], j["onednn"]) for j in jobs] == [("off", "on"), ("on", "on")]
  with pytest.raises(UserInputError, match="Unknown onednn setting 'fast'"):
    benchmark_runner.with_settings(jobs, "onednn", ["fast"])
  with pytest.raises(UserInputError, match="Unknown remapping setting 'yes'"):
    benchmark_runner.with_settings(jobs, "remapping", ["yes"])
  jobs = benchmark_runner.with_settings(jobs[:1], "sync_batch_norm", ["on", "off"])
  assert [j["sync_batch_norm"] for j in jobs] == ["on", "off"]
  with pytest.raises(UserInputError, match="Unknown sync_batch_norm setting 'yes'"):
    benchmark_runner.with_settings(jobs, "sync_batch_norm", ["yes"])
  with pytest.raises(UserInputError, match="Unknown benchmark setting 'xla'"):
    benchmark_runner.with_settings(jobs, "xla", ["on"])


def test_imagenet_pipeline_figure_reads_jpeg_tfrecords():
  assert benchmark_jobs._imagenet_pipeline_images_per_s(8, 2, 64) > 0
