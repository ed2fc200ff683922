"""alpha over the epochs of a search: its history, each edge's entropy, and plots.

For an edge with architecture weights alpha (8 values, one per primitive), the
mixing weights are p = softmax(alpha) and the edge's entropy is

    H = -sum_o p_o log p_o,

log 8 (about 2.08) for a uniform edge and 0 for an edge that has chosen one
operation: the entropies show how far each edge has decided, and an edge whose
weight drifts to `skip_connect` shows up in the plots long before the genotype
collapses.

`alphas_history.npz` in the run directory holds alpha after every finished epoch
(`epochs`, `normal`, `reduce`: `(E,)`, `(E, 14, 8)`, `(E, 14, 8)`); a resumed
search drops the epochs it runs again.
"""

from __future__ import annotations

import os

import numpy as np

from milenas_tf.core import files
from milenas_tf.space import genotypes

HISTORY_FILE = "alphas_history.npz"


def softmax(alphas: np.ndarray) -> np.ndarray:
  """softmax over the last axis (the primitives)."""
  e = np.exp(alphas - alphas.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def edge_entropy(alphas: np.ndarray) -> np.ndarray:
  """The entropy of softmax(alpha) of each edge (natural log): `(..., 14, 8)` -> `(..., 14)`."""
  p = softmax(np.asarray(alphas, np.float64))
  return -np.sum(p * np.log(np.clip(p, 1e-300, None)), axis=-1)


def load(output_dir: str) -> dict[str, np.ndarray] | None:
  """The history of a run directory (None without one)."""
  path = os.path.join(output_dir, HISTORY_FILE)
  if not os.path.exists(path):
    return None
  with np.load(path) as data:
    return {k: data[k] for k in ("epochs", "normal", "reduce")}


def append(output_dir: str, epoch: int, normal: np.ndarray, reduce: np.ndarray
           ) -> dict[str, np.ndarray]:
  """Records alpha after `epoch` (1-based), replacing that epoch and later ones.

  Returns:
    The history as written.
  """
  history = load(output_dir)
  normal, reduce = np.asarray(normal)[None], np.asarray(reduce)[None]
  if history is None:
    history = {"epochs": np.array([epoch]), "normal": normal, "reduce": reduce}
  else:
    keep = history["epochs"] < epoch
    history = {"epochs": np.append(history["epochs"][keep], epoch),
               "normal": np.concatenate([history["normal"][keep], normal]),
               "reduce": np.concatenate([history["reduce"][keep], reduce])}
  files.save_arrays_atomic(os.path.join(output_dir, HISTORY_FILE), **history)
  return history


def plot(history: dict[str, np.ndarray], cell: str, path: str) -> None:
  """One panel per edge: softmax(alpha) of each primitive against the epoch.

  Args:
    history: as `load` returns it.
    cell: "normal" or "reduce".
    path: the PNG to write.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top

  epochs, weights = history["epochs"], softmax(history[cell])
  fig = Figure(figsize=(14, 6.5))
  FigureCanvasAgg(fig)
  axes = fig.subplots(2, 7, sharex=True, sharey=True)
  for edge, ((node, source), ax) in enumerate(zip(genotypes.edges(), axes.flat)):
    for o, name in enumerate(genotypes.PRIMITIVES):
      ax.plot(epochs, weights[:, edge, o], marker="." if len(epochs) < 20 else None,
              label=name)
    ax.set_title(f"node {node} <- {source}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  for ax in axes[-1]:
    ax.set_xlabel("epoch")
  axes[0, 0].set_ylabel("softmax(alpha)")
  axes[1, 0].set_ylabel("softmax(alpha)")
  handles, labels = axes[0, 0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=8, fontsize=9)
  fig.suptitle(f"{cell} cell: each edge's operation weights over the search")
  fig.tight_layout(rect=(0, 0.05, 1, 0.96))
  files.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"),
                     suffix=".png")
