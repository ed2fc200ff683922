"""Speed and memory benchmarks, each configuration in a fresh process.

`run(...)` spawns one child Python process per job (a search configuration,
method and order, a training configuration, or an exported network and batch size),
so that time to first step (graph construction, tracing, first execution) and
peak memory are those a user sees, and prints one JSON object per line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Iterable, Iterator

from milenas_tf.benchmarks import jobs as benchmark_jobs
from milenas_tf.core import graph_options
from milenas_tf.core import launch
from milenas_tf.core import validation
from milenas_tf.core.errors import UserInputError
from milenas_tf.search import second_order
from milenas_tf.search import update_rules


def _train_config_names(configs: Iterable[str], kind: str) -> list[str]:
  return [validation.check_choice(f"{kind} benchmark configuration", name,
                                  benchmark_jobs.TRAIN_CONFIGS) for name in configs]


def _integers(values: Iterable, what: str) -> list[int]:
  """Command-line values (strings) as integers."""
  values = list(values)
  try:
    return [int(v) for v in values]
  except ValueError:
    raise UserInputError(f"{what} must be integers, got {values}.") from None


def _check_devices(devices: list[int], batch_size: int, config: str,
                   what: str = "devices") -> None:
  for count in devices:
    if count < 1 or batch_size % count:
      raise UserInputError(f"{what}={count} must be positive and divide the batch "
                           f"{batch_size} of {config!r}.")


def serving_jobs(configs: Iterable[str], batch_sizes: Iterable[int] = (1, 64),
                 duration_s: float = 20.0) -> list[dict]:
  """The serving jobs of `run`, one per configuration and batch size, validated before
  anything runs."""
  configs = _train_config_names(configs, "serving")
  batch_sizes = _integers(batch_sizes, "batch sizes")
  for batch_size in batch_sizes:
    validation.check_int("serving batch size", batch_size)
  validation.check_number("serving duration", duration_s, 0, exclude_minimum=True)
  return [dict(benchmark="serving", config=c, batch_size=b, duration_s=duration_s)
          for c in configs for b in batch_sizes]


def train_jobs(configs: Iterable[str], steps: int, devices: Iterable[int] = (1,)
               ) -> list[dict]:
  """The training-step jobs of `run`, one per configuration and device count,
  validated before anything runs."""
  configs = _train_config_names(configs, "training")
  devices = _integers(devices, "devices")
  for name in configs:
    _check_devices(devices, benchmark_jobs.TRAIN_CONFIGS[name]["batch_size"], name)
  validation.check_int("steps", steps)
  return [dict(benchmark="train_step", config=c, steps=steps, devices=d)
          for c in configs for d in devices]


def search_jobs(configs: Iterable[str], methods: Iterable[str], orders: Iterable[str],
                steps: int, hessians: Iterable[str] = ("finite_difference",),
                devices: Iterable[int] = (1,), workers: Iterable[int] = (1,)
                ) -> list[dict]:
  """The jobs of `run` for every combination, validated before anything runs.

  Second-order methods get one job per Hessian-vector product in `hessians`;
  first-order ones a single job with `hessian=None`. Each combination runs on
  each replica count of `devices` (second-order methods on one device only).
  First-order methods also run on each count above 1 of `workers`, twice: as a
  `MultiWorkerMirroredStrategy` cluster of that many processes, and as as many
  independent processes each stepping on its share of the batch (the same
  computation without the collectives; see `search_step`).

  Raises:
    UserInputError: for an unknown configuration, method, order or hessian, a
      replica count that does not divide a configuration's batch, or second-order
      methods without a one-device job.
  """
  configs, methods, orders = list(configs), list(methods), list(orders)
  hessians, devices = list(hessians), _integers(devices, "devices")
  workers = [w for w in _integers(workers, "workers") if w != 1]
  for name in configs:
    validation.check_choice("benchmark configuration", name, benchmark_jobs.SEARCH_CONFIGS)
    batch_size = benchmark_jobs.SEARCH_CONFIGS[name]["batch_size"]
    _check_devices(devices, batch_size, name)
    _check_devices(workers, batch_size, name, "workers")
  for method in methods:
    update_rules.get_rule(method)
  for order in orders:
    validation.check_choice("update order", order, update_rules.ORDERS)
  for hessian in hessians:
    validation.check_choice("hessian", hessian, second_order.HESSIANS)
  validation.check_int("steps", steps)
  second = update_rules.SECOND_ORDER_METHODS
  if configs and orders and 1 not in devices and any(m in second for m in methods):
    raise UserInputError(f"The second-order methods run on one device; add 1 to devices "
                         f"(got {devices}) or leave them out.")
  jobs = [dict(config=c, method=m, order=o, steps=steps, hessian=h, devices=d)
          for c in configs for d in devices for o in orders for m in methods
          for h in (hessians if m in second else [None])
          if d == 1 or m not in second]
  return jobs + [dict(config=c, method=m, order=o, steps=steps, hessian=None, devices=1,
                      workers=w, communicate=together)
                 for c in configs for w in workers for together in (True, False)
                 for o in orders for m in methods if m not in second]


RATIO_KEYS = ("first_step_s", "step_s", "peak_memory_mb")


def with_ratios(results: Iterable[dict], baseline: str = "milenas") -> Iterator[dict]:
  """Adds `<key>_vs_<baseline>` ratios to results of the baseline's configuration,
  order, settings, replica and worker counts and round.

  A result gets ratios once the baseline method's result of the same configuration,
  order, oneDNN, Grappler and batch-norm settings, replica and worker counts and round
  (`in_rounds`) has gone by (jobs list it first when it is asked for).
  """
  base = {}
  for result in results:
    key = (result.get("config"), result.get("order"), result.get("onednn"),
           result.get("remapping"), result.get("graph_optimizer"), result.get("devices"),
           result.get("workers"), result.get("communicate"), result.get("sync_batch_norm"),
           result.get("round"))
    if result.get("method") == baseline and "error" not in result:
      base[key] = result
    if key in base and "error" not in result:
      for name in RATIO_KEYS:
        if base[key].get(name):
          result[f"{name}_vs_{baseline}"] = round(result[name] / base[key][name], 3)
    yield result


# TF_ENABLE_ONEDNN_OPTS of a job's process; "default": as in this process.
ONEDNN_SETTINGS = {"on": "1", "off": "0", "default": None}


def with_settings(jobs: Iterable[dict], key: str, settings: Iterable[str]) -> list[dict]:
  """Each job once per setting of `key`, validated before anything runs.

  Keys: "onednn", one of "on", "off" (`TF_ENABLE_ONEDNN_OPTS` of the child
  process) or "default" (the variable as in this process); "remapping", one of
  `graph_options.REMAPPING`; "graph_optimizer", one of `graph_options.GRAPH_OPTIMIZER`;
  "sync_batch_norm", "on" or "off" (search and training jobs only).

  Raises:
    UserInputError: for an unknown key or setting.
  """
  allowed = {"onednn": tuple(ONEDNN_SETTINGS), "remapping": graph_options.REMAPPING,
             "graph_optimizer": graph_options.GRAPH_OPTIMIZER,
             "sync_batch_norm": ("on", "off")}
  validation.check_choice("benchmark setting", key, allowed)
  settings = [validation.check_choice(f"{key} setting", s, allowed[key]) for s in settings]
  return [{**job, key: setting} for setting in settings for job in jobs]


def in_rounds(jobs: Iterable[dict], rounds: int) -> list[dict]:
  """The whole list of jobs `rounds` times over, one round after the other.

  Each job is marked with its round (0, 1, ...), which its result carries, and
  `with_ratios` takes each round's ratios to the baseline of the same round: the
  spread of a ratio between rounds is the machine's noise on it.

  Raises:
    UserInputError: if `rounds` is not a positive integer.
  """
  validation.check_int("rounds", rounds)
  jobs = list(jobs)
  return [{**job, "round": r} for r in range(rounds) for job in jobs]


def run(jobs: Iterable[dict], timeout_s: float = 1800) -> Iterator[dict]:
  """Runs each job (kwargs of `search_step`, of `train_step` with
  `benchmark="train_step"` or of `serving_latency` with `benchmark="serving"`, and
  optionally `onednn`, `remapping`, `graph_optimizer` and `sync_batch_norm` of
  `with_settings` and `round` of `in_rounds`) in a fresh process.

  Yields:
    The result dict of each job, or a dict with an "error" key.
  """
  for job in jobs:
    kwargs = dict(job)
    onednn = kwargs.pop("onednn", "default")
    marks = {"round": kwargs.pop("round")} if "round" in job else {}
    env = dict(os.environ)
    if ONEDNN_SETTINGS[onednn] is not None:
      env["TF_ENABLE_ONEDNN_OPTS"] = ONEDNN_SETTINGS[onednn]
    try:
      outcomes = _run_processes(kwargs, env, timeout_s)
    except subprocess.TimeoutExpired:
      yield {**job, "error": f"timed out after {timeout_s} s"}
      continue
    results = []
    for returncode, stdout, stderr in outcomes:
      lines = [l for l in stdout.splitlines() if l.startswith("{")]
      if returncode or not lines:
        tail = stderr.strip().splitlines()[-1:] or ["no output"]
        results = [{**job, "error": f"exit {returncode}: {tail[0]}"}]
        break
      results.append(json.loads(lines[-1]))
    if "error" in results[0]:
      yield results[0]
    else:
      yield {**_slowest(results), "onednn": onednn, **marks}


def _slowest(results: list[dict]) -> dict:
  """One job's result from its processes' results: the slowest worker's step, which
  sets the pace of a synchronous cluster (one process: its result)."""
  return max(results, key=lambda r: r.get("step_s", 0.0))


def _run_processes(kwargs: dict, env: dict, timeout_s: float
                   ) -> list[tuple[int, str, str]]:
  """Runs one job in `kwargs["workers"]` processes (default 1) at once; with
  `communicate`, as one cluster on free ports of 127.0.0.1.

  Returns:
    (exit status, stdout, stderr) of each process, worker 0 first.

  Raises:
    subprocess.TimeoutExpired: when a process runs past `timeout_s`; all are killed.
  """
  code = "from milenas_tf.benchmarks import jobs; jobs._child_main()"
  workers = kwargs.get("workers", 1)
  envs = [env] * workers
  if workers > 1 and kwargs.get("communicate", True):
    addresses = [f"127.0.0.1:{port}" for port in launch.free_ports(workers)]
    envs = [{**env, "TF_CONFIG": launch.tf_config(addresses, i)} for i in range(workers)]
  with tempfile.TemporaryDirectory() as directory:
    # Files, not pipes: a worker blocked on a full pipe would stall the whole cluster.
    streams = [(open(os.path.join(directory, f"{i}.out"), "w+"),
                open(os.path.join(directory, f"{i}.err"), "w+")) for i in range(workers)]
    processes = [subprocess.Popen([sys.executable, "-c", code, json.dumps(kwargs)],
                                  stdout=out, stderr=err, text=True, env=e)
                 for e, (out, err) in zip(envs, streams)]
    try:
      deadline = time.monotonic() + timeout_s
      for p in processes:
        p.wait(timeout=max(deadline - time.monotonic(), 0.1))
    finally:
      for p in processes:
        if p.poll() is None:
          p.kill()
          p.wait()
    outcomes = []
    for p, (out, err) in zip(processes, streams):
      out.seek(0)
      err.seek(0)
      outcomes.append((p.returncode, out.read(), err.read()))
      out.close()
      err.close()
    return outcomes
