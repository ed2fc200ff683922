"""Search methods side by side under one budget (the analogue of MiLeNAS Fig. 2).

`compare_methods(config, output_dir, seeds=N)` runs `search_run.run_search` N
times per method, with seeds `config.seed, config.seed + 1, ...` and everything
else but the method equal, each in `output_dir/<method>/` (one seed) or
`output_dir/<method>/seed_<s>/` (so an interrupted comparison resumes where it
stopped). With `sweep=(field, values)` each method runs once per value of one
field (the λ study: `("lambda_train", [0.1, 1.0, 999.0])`), in
`output_dir/<field>=<value>/`. It writes:

- `comparison.json`: per method, the mean and sample standard deviation over the
  seeds of every epoch's seconds and search-val accuracy (`epoch_s`,
  `epoch_s_std`, `val_accuracy`, `val_accuracy_std`), the mean steady epoch time
  and its ratio to the first method's, the final search-val accuracy, and each
  run's own figures and derived genotype (`runs`);
- `comparison.md`: the same as a table, mean ± standard deviation;
- `comparison.png`: search-val accuracy against epoch and against wall time, the
  mean as a line and one standard deviation as a band.

The paper's Figure 2 averages four runs per method. With an early stop, runs
may end after different epochs: each epoch's figures are over the runs that
reached it. `run=False` runs nothing: it reports the runs of the same configuration
already finished under `output_dir` (while others still run, or when some variants
had fewer runs), each variant over the seeds it has.
"""

from __future__ import annotations

import json
import os
import statistics
from typing import Sequence

import ml_collections

from milenas_tf.core import callbacks
from milenas_tf.core import files
from milenas_tf.core import run_directory
from milenas_tf.core import validation
from milenas_tf.core.errors import UserInputError
from milenas_tf.search import config as search_config
from milenas_tf.search import run as search_run
from milenas_tf.space import genotypes

DEFAULT_METHODS = ("milenas", "milenas_2nd", "darts_1st", "darts_2nd")


def summarize(method: str, records: list[dict], genotype, seed: int | None = None) -> dict:
  """One run's figures from its epoch log."""
  seconds = [r["seconds"] for r in records]
  # The first epoch also traces the step's functions; later ones are steady.
  steady = seconds[1:] or seconds
  return {
      "method": method,
      "seed": seed,
      "epoch_s": seconds,
      "mean_epoch_s": round(statistics.mean(steady), 2),
      "total_s": round(sum(seconds), 1),
      "val_accuracy": [round(r.get("val_accuracy", float("nan")), 4) for r in records],
      "final_val_accuracy": round(records[-1].get("val_accuracy", float("nan")), 4),
      "genotype": genotype.to_dict(),
  }


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for one value)."""
  values = list(values)
  return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _per_epoch(runs: list[dict], key: str, digits: int) -> tuple[list, list]:
  """Mean and standard deviation of `key` at each epoch, over the runs that reached it."""
  means, stds = [], []
  for epoch in range(max(len(r[key]) for r in runs)):
    mean, std = _mean_std([r[key][epoch] for r in runs if len(r[key]) > epoch])
    means.append(round(mean, digits))
    stds.append(round(std, digits))
  return means, stds


def aggregate(method: str, runs: list[dict]) -> dict:
  """A method's figures over its runs (`summarize`'s records, one per seed)."""
  epoch_s, epoch_s_std = _per_epoch(runs, "epoch_s", 3)
  accuracy, accuracy_std = _per_epoch(runs, "val_accuracy", 4)
  mean_epoch, mean_epoch_std = _mean_std([r["mean_epoch_s"] for r in runs])
  final, final_std = _mean_std([r["final_val_accuracy"] for r in runs])
  return {
      "method": method,
      "seeds": [r["seed"] for r in runs],
      "epoch_s": epoch_s,
      "epoch_s_std": epoch_s_std,
      "mean_epoch_s": round(mean_epoch, 2),
      "mean_epoch_s_std": round(mean_epoch_std, 2),
      "total_s": round(statistics.mean(r["total_s"] for r in runs), 1),
      "val_accuracy": accuracy,
      "val_accuracy_std": accuracy_std,
      "final_val_accuracy": round(final, 4),
      "final_val_accuracy_std": round(final_std, 4),
      "genotype": runs[0]["genotype"],
      "runs": runs,
  }


def parse_sweep(text: str, config: ml_collections.ConfigDict) -> tuple[str, list]:
  """`"FIELD=V1,V2,..."` as (field, values of the field's type).

  Raises:
    UserInputError: for a malformed sweep, an unknown field, `method` or `seed`
      (the comparison sets them), or a value of the wrong type.
  """
  field, sep, values = text.partition("=")
  field = field.strip()
  if not sep or not field or not values.strip():
    raise UserInputError(f"--sweep must be FIELD=V1,V2,..., e.g. lambda_train=0.1,1,999; got "
                         f"{text!r}.")
  if field in ("method", "seed"):
    raise UserInputError(f"--sweep cannot vary {field}: use --methods and --seeds.")
  if field not in config:
    raise UserInputError(f"--sweep names no field of the search config: {field!r}.")
  kind = type(config[field])
  parsed = []
  for value in values.split(","):
    value = value.strip()
    try:
      if kind is bool:
        if value.lower() not in ("true", "false"):
          raise ValueError(value)
        parsed.append(value.lower() == "true")
      else:
        parsed.append(kind(value))
    except ValueError:
      raise UserInputError(f"--sweep value {value!r} does not fit config.{field} "
                           f"({kind.__name__}).") from None
  return field, parsed


def _variants(methods: Sequence[str], sweep: tuple[str, Sequence] | None
              ) -> list[tuple[str, dict]]:
  """(label, config overrides) of every variant: each method, times each swept value."""
  if sweep is None:
    return [(method, {"method": method}) for method in methods]
  field, values = sweep
  return [(f"{method}_{field}={value}" if len(methods) > 1 else f"{field}={value}",
           {"method": method, field: value}) for method in methods for value in values]


def _finished_genotype(run_dir: str, config: ml_collections.ConfigDict):
  """The final genotype of the search of `config` in `run_dir`; None if none finished.

  Raises:
    UserInputError: if `run_dir` holds a run of another configuration.
  """
  if not run_directory.check_output_dir(run_dir, config.to_dict(), "search",
                                        defaults=search_config.default_config().to_dict()):
    return None
  path = os.path.join(run_dir, "genotype.json")
  if not os.path.exists(path):
    return None
  # First through load_genotype: a damaged file is its one-line error, not a traceback.
  genotype = genotypes.load_genotype(path)
  with open(path) as f:
    return genotype if json.load(f).get("final", False) else None


def compare_methods(config: ml_collections.ConfigDict, output_dir: str,
                    methods: Sequence[str] = DEFAULT_METHODS, *, seeds: int = 1,
                    sweep: tuple[str, Sequence] | None = None,
                    verbose: int | str = 2, run: bool = True) -> dict:
  """Runs each method (and swept value) `seeds` times on `config`, side by side.

  Args:
    config: a search configuration; its `method` is replaced by each of `methods`
      and its `seed` by `config.seed + i` for the i-th run.
    output_dir: one subdirectory per variant (and seed), and the reports.
    methods: the methods; the first variant is the reference of the time ratios.
    seeds: runs per variant.
    sweep: (field, values): each method runs with each value of the field
      (`parse_sweep` reads it from text), e.g. `("lambda_train", [0.1, 1.0, 999.0])`.
    verbose: Keras progress verbosity of each search.
    run: False: run nothing, report the finished runs (a variant without one is left
      out).

  Returns:
    The content of `comparison.json`.

  Raises:
    UserInputError: for an unknown method, a bad seed count, sweep or configuration,
      before any search starts; a run directory of another configuration; with
      `run=False`, no finished run at all.
  """
  validation.check_int("--seeds", seeds)
  if not methods:
    raise UserInputError("--methods names no method; give at least one, e.g. milenas.")
  variants = []
  for label, overrides in _variants(methods, sweep):
    variant_config = ml_collections.ConfigDict(config.to_dict())
    variant_config.update(overrides)
    search_config.validate(variant_config)
    variants.append((label, variant_config))
  results = []
  for label, variant_config in variants:
    runs = []
    for i in range(seeds):
      run_config = ml_collections.ConfigDict(variant_config.to_dict())
      run_config.seed = config.seed + i
      run_dir = os.path.join(output_dir, label)
      if seeds > 1:
        run_dir = os.path.join(run_dir, f"seed_{run_config.seed}")
      if run:
        print(f"== {label}, seed {run_config.seed} -> {run_dir}", flush=True)
        genotype = search_run.run_search(run_config, run_dir, verbose=verbose).genotype
      else:
        genotype = _finished_genotype(run_dir, run_config)
        if genotype is None:
          print(f"== {label}, seed {run_config.seed}: no finished run in {run_dir}")
          continue
      records = callbacks.read_epoch_log(os.path.join(run_dir, run_directory.EPOCH_LOG))
      runs.append(summarize(run_config.method, records, genotype, run_config.seed))
    if runs:
      results.append({"label": label, **aggregate(variant_config.method, runs)})
  if not results:
    raise UserInputError(f"{output_dir} holds no finished run of these methods and this "
                         "configuration; run the comparison without --report_only first.")
  reference = results[0]["label"]
  for r in results:
    r["epoch_time_vs_" + reference] = round(r["mean_epoch_s"] / results[0]["mean_epoch_s"],
                                            2)
  report = {"config": config.to_dict(), "seeds": seeds,
            "sweep": None if sweep is None else {"field": sweep[0], "values": list(sweep[1])},
            "methods": results}
  files.write_json_atomic(os.path.join(output_dir, "comparison.json"), report)
  with open(os.path.join(output_dir, "comparison.md"), "w") as f:
    f.write(markdown_table(results, reference))
  plot(results, os.path.join(output_dir, "comparison.png"))
  return report


def _pm(mean: float, std: float, digits: int) -> str:
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(results: list[dict], reference: str) -> str:
  """The comparison as a Markdown table (mean ± sample standard deviation over seeds)."""
  lines = [f"| run | runs | mean epoch (s) | vs {reference} | total (s) | "
           "search-val accuracy by epoch | normal cell (first seed) |",
           "|---|---|---|---|---|---|---|"]
  for r in results:
    normal = ", ".join(f"{op}({src})" for op, src in r["genotype"]["normal"])
    spread = zip(r["val_accuracy"], r["val_accuracy_std"])
    accuracy = " / ".join(_pm(a, s, 3) for a, s in spread)
    lines.append(f"| {r.get('label', r['method'])} | {len(r['runs'])} | "
                 f"{_pm(r['mean_epoch_s'], r['mean_epoch_s_std'], 1)} | "
                 f"{r['epoch_time_vs_' + reference]} | {r['total_s']} | {accuracy} | "
                 f"{normal} |")
  return "\n".join(lines) + "\n"


def plot(results: list[dict], path: str) -> None:
  """Search-val accuracy against epoch and against cumulative wall time: the mean
  over seeds as a line, one standard deviation as a band."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top

  fig, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(10, 4))
  for r in results:
    epochs = list(range(1, len(r["val_accuracy"]) + 1))
    elapsed = [sum(r["epoch_s"][:e]) / 60 for e in epochs]
    low = [a - s for a, s in zip(r["val_accuracy"], r["val_accuracy_std"])]
    high = [a + s for a, s in zip(r["val_accuracy"], r["val_accuracy_std"])]
    for ax, x in ((by_epoch, epochs), (by_time, elapsed)):
      line, = ax.plot(x, r["val_accuracy"], marker="o", label=r.get("label", r["method"]))
      if len(r["runs"]) > 1:
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2)
  by_epoch.set(xlabel="epoch", ylabel="search-val accuracy")
  by_epoch.xaxis.set_major_locator(MaxNLocator(integer=True))
  by_time.set(xlabel="wall time (min)", ylabel="search-val accuracy")
  for ax in (by_epoch, by_time):
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
