"""Search methods side by side under one budget (the analogue of MiLeNAS Fig. 2).

`compare_methods(config, output_dir)` runs `search_run.run_search` once per method,
with everything but the method equal, each in `output_dir/<method>/` (so an
interrupted comparison resumes where it stopped), and writes:

- `comparison.json`: per method, the seconds of every epoch, the mean epoch time
  and its ratio to the first method's, the search-val accuracy of every epoch,
  and the derived genotype;
- `comparison.md`: the same as a table;
- `comparison.png`: search-val accuracy against epoch and against wall time.
"""

from __future__ import annotations

import os
import statistics
from typing import Sequence

import ml_collections

from milenas_tf.core import callbacks
from milenas_tf.core import files
from milenas_tf.core import run_directory
from milenas_tf.search import run as search_run
from milenas_tf.search import update_rules

DEFAULT_METHODS = ("milenas", "milenas_2nd", "darts_1st", "darts_2nd")


def summarize(method: str, records: list[dict], genotype) -> dict:
  """One method's figures from its epoch log."""
  seconds = [r["seconds"] for r in records]
  # The first epoch also traces the step's functions; later ones are steady.
  steady = seconds[1:] or seconds
  return {
      "method": method,
      "epoch_s": seconds,
      "mean_epoch_s": round(statistics.mean(steady), 2),
      "total_s": round(sum(seconds), 1),
      "val_accuracy": [round(r.get("val_accuracy", float("nan")), 4) for r in records],
      "final_val_accuracy": round(records[-1].get("val_accuracy", float("nan")), 4),
      "genotype": genotype.to_dict(),
  }


def compare_methods(config: ml_collections.ConfigDict, output_dir: str,
                    methods: Sequence[str] = DEFAULT_METHODS, *,
                    verbose: int | str = 2) -> dict:
  """Runs each method on `config` and reports them side by side.

  Args:
    config: a search configuration; its `method` is replaced by each of `methods`.
    output_dir: one subdirectory per method, and the reports.
    methods: the methods; the first is the reference of the time ratios.
    verbose: Keras progress verbosity of each search.

  Returns:
    The content of `comparison.json`.

  Raises:
    UserInputError: for an unknown method or a bad configuration.
  """
  for method in methods:
    update_rules.get_rule(method)
  results = []
  for method in methods:
    method_config = ml_collections.ConfigDict(config.to_dict())
    method_config.method = method
    run_dir = os.path.join(output_dir, method)
    print(f"== {method} -> {run_dir}", flush=True)
    result = search_run.run_search(method_config, run_dir, verbose=verbose)
    records = callbacks.read_epoch_log(os.path.join(run_dir, run_directory.EPOCH_LOG))
    results.append(summarize(method, records, result.genotype))
  base = results[0]["mean_epoch_s"]
  for r in results:
    r["epoch_time_vs_" + methods[0]] = round(r["mean_epoch_s"] / base, 2)
  report = {"config": config.to_dict(), "methods": results}
  files.write_json_atomic(os.path.join(output_dir, "comparison.json"), report)
  with open(os.path.join(output_dir, "comparison.md"), "w") as f:
    f.write(markdown_table(results, methods[0]))
  plot(results, os.path.join(output_dir, "comparison.png"))
  return report


def markdown_table(results: list[dict], reference: str) -> str:
  """The comparison as a Markdown table."""
  lines = [f"| method | mean epoch (s) | vs {reference} | total (s) | "
           "search-val accuracy by epoch | normal cell |",
           "|---|---|---|---|---|---|"]
  for r in results:
    normal = ", ".join(f"{op}({src})" for op, src in r["genotype"]["normal"])
    accuracy = " / ".join(f"{a:.3f}" for a in r["val_accuracy"])
    lines.append(f"| {r['method']} | {r['mean_epoch_s']} | "
                 f"{r['epoch_time_vs_' + reference]} | {r['total_s']} | {accuracy} | "
                 f"{normal} |")
  return "\n".join(lines) + "\n"


def plot(results: list[dict], path: str) -> None:
  """Search-val accuracy against epoch and against cumulative wall time."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(10, 4))
  for r in results:
    epochs = list(range(1, len(r["val_accuracy"]) + 1))
    elapsed = [sum(r["epoch_s"][:e]) / 60 for e in epochs]
    by_epoch.plot(epochs, r["val_accuracy"], marker="o", label=r["method"])
    by_time.plot(elapsed, r["val_accuracy"], marker="o", label=r["method"])
  by_epoch.set(xlabel="epoch", ylabel="search-val accuracy")
  by_time.set(xlabel="wall time (min)", ylabel="search-val accuracy")
  for ax in (by_epoch, by_time):
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
