"""Cell diagrams of a genotype (matplotlib): nodes, edges and operation labels placed
clear of each other.
"""

from __future__ import annotations

import os

import numpy as np

from milenas_tf.core.errors import UserInputError
from milenas_tf.space import genotypes

_OP_COLORS = {
    "max_pool_3x3": "#1f77b4",
    "avg_pool_3x3": "#17becf",
    "skip_connect": "#7f7f7f",
    "sep_conv_3x3": "#d62728",
    "sep_conv_5x5": "#ff7f0e",
    "dil_conv_3x3": "#2ca02c",
    "dil_conv_5x5": "#9467bd",
}


_NODE_RADIUS = 0.5


_CURVATURES = (0.0, 0.15, -0.15, 0.3, -0.3, 0.45, -0.45, 0.6, -0.6)


_LABEL_POSITIONS = (0.5, 0.6, 0.4, 0.7, 0.3, 0.8, 0.2)


def _arc_point(p0, p1, rad: float, t: float) -> tuple[float, float]:
  """A point of matplotlib's `arc3,rad=rad` quadratic curve from p0 to p1."""
  (x0, y0), (x1, y1) = p0, p1
  cx, cy = (x0 + x1) / 2 + rad * (y1 - y0), (y0 + y1) / 2 - rad * (x1 - x0)
  return ((1 - t)**2 * x0 + 2 * t * (1 - t) * cx + t**2 * x1,
          (1 - t)**2 * y0 + 2 * t * (1 - t) * cy + t**2 * y1)


def _route(p0, p1, obstacles, drawn) -> float:
  """Picks a curvature that keeps clear of nodes and of the arcs already drawn.

  Args:
    p0: start point.
    p1: end point.
    obstacles: centres of the nodes to avoid.
    drawn: sampled points of the arcs already drawn; updated in place.

  Returns:
    The `rad` of an `arc3` connection style.
  """

  def min_gap(points, others):
    return min((np.hypot(x - ox, y - oy) for x, y in points for ox, oy in others),
               default=np.inf)

  best = None
  for rad in _CURVATURES:
    points = [_arc_point(p0, p1, rad, t) for t in np.linspace(0.1, 0.9, 17)]
    node_gap = min(min_gap(points, obstacles), 2 * _NODE_RADIUS)
    # Away from the end points, prefer not to run along earlier arcs.
    arc_gap = min(min_gap(points[4:-4], drawn), 0.5)
    cost = (-10 * node_gap, -arc_gap + 0.3 * abs(rad))
    if best is None or cost < best[0]:
      best = (cost, rad, points)
  drawn.extend(best[2])
  return best[1]


def _place_label(p0, p1, rad, taken) -> tuple[float, float]:
  """Picks a point of the arc far from the labels and nodes already `taken`."""

  def gap(point):
    # Labels are wide and short boxes: >= 1 means no overlap.
    return min((max(abs(point[0] - x) / 1.3, abs(point[1] - y) / 0.35) for x, y in taken),
               default=np.inf)

  candidates = [_arc_point(p0, p1, rad, t) for t in _LABEL_POSITIONS]
  for point in candidates:
    if gap(point) >= 1.0:
      return point
  return max(candidates, key=gap)


def plot_genotype(genotype: genotypes.Genotype, path: str | os.PathLike[str],
                  cell: str = "normal") -> None:
  """Draws one cell of a genotype as a DAG and saves it as a PNG.

  Nodes are the inputs c_{k-2}, c_{k-1}, the intermediate nodes 0..3 and the
  output c_{k}; edges are labelled with their op names.

  Args:
    genotype: the genotype to draw.
    path: destination PNG file; parent directories are created.
    cell: "normal" or "reduce".

  Raises:
    UserInputError: if `cell` is not "normal" or "reduce", or the genotype
      is invalid.
  """
  if cell not in genotypes.CELL_TYPES:
    raise UserInputError(f"cell must be 'normal' or 'reduce', got {cell!r}.")
  # Imported here: matplotlib is only needed for plotting, and the Agg canvas
  # works without a display and without touching pyplot's global backend.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.patches import Circle, FancyArrowPatch

  genotype = genotypes.as_genotype(genotype)
  pairs = getattr(genotype, cell)
  concat = getattr(genotype, f"{cell}_concat")
  num_nodes = len(pairs) // genotypes.EDGES_PER_NODE
  out = num_nodes + genotypes.NUM_INPUTS
  # Inputs on the left, intermediate nodes on a descending diagonal, output
  # on the right: every edge goes left to right.
  pos = {0: (0.0, 1.6), 1: (0.0, -1.6)}
  for i in range(num_nodes):
    pos[i + genotypes.NUM_INPUTS] = (3.0 + 2.6 * i, 2.4 - 4.8 * i / max(num_nodes - 1, 1))
  pos[out] = (3.6 + 2.6 * num_nodes, 0.0)
  labels = {0: r"$c_{k-2}$", 1: r"$c_{k-1}$", out: r"$c_{k}$"}
  labels.update({i + genotypes.NUM_INPUTS: str(i) for i in range(num_nodes)})
  colors = {0: "#c7e9c0", 1: "#c7e9c0", out: "#fdd49e"}

  fig = Figure(figsize=(11, 5))
  FigureCanvasAgg(fig)
  ax = fig.add_axes((0.02, 0.02, 0.96, 0.9))
  circles = {}
  for n, (x, y) in pos.items():
    circles[n] = Circle((x, y), _NODE_RADIUS, facecolor=colors.get(n, "#c6dbef"),
                        edgecolor="black", zorder=3)
    ax.add_patch(circles[n])
    ax.text(x, y, labels[n], ha="center", va="center", fontsize=12, zorder=4)

  drawn = []

  def arrow(src, dst, avoid_arcs=True, **kwargs):
    obstacles = [p for n, p in pos.items() if n not in (src, dst)]
    arcs = drawn if avoid_arcs else []
    rad = _route(pos[src], pos[dst], obstacles, arcs)
    if not avoid_arcs:
      drawn.extend(arcs)
    ax.add_patch(FancyArrowPatch(
        pos[src], pos[dst], patchA=circles[src], patchB=circles[dst],
        connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>", mutation_scale=14,
        zorder=2, **kwargs))
    return rad

  taken = list(pos.values())
  for k, (op, src) in enumerate(pairs):
    dst = k // genotypes.EDGES_PER_NODE + genotypes.NUM_INPUTS
    color = _OP_COLORS.get(op, "black")
    rad = arrow(src, dst, color=color, linewidth=1.6)
    x, y = _place_label(pos[src], pos[dst], rad, taken)
    taken.append((x, y))
    ax.text(x, y, op, ha="center", va="center", fontsize=9, color=color, zorder=5,
            bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor=color,
                      alpha=0.9))
  for n in concat:
    arrow(n, out, avoid_arcs=False, color="#999999", linestyle="--", linewidth=1.0)

  xs, ys = zip(*pos.values(), *drawn)
  ax.set_xlim(min(xs) - 1.0, max(xs) + 1.0)
  ax.set_ylim(min(ys) - 0.8, max(ys) + 0.8)
  ax.set_aspect("equal")
  ax.axis("off")
  fig.suptitle(f"{cell} cell", fontsize=13)
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, format="png", dpi=120)
