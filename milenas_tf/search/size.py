"""Model-size-based search: the size of the derived cells, epoch by epoch.

The MiLeNAS paper's "model size-based searching" watches the cells a search derives as
it goes: a cell with more convolutions gives a larger network, and the search
passes through cells of several sizes on its way. Every epoch this module
measures the derived genotype:

- `normal_convs`, `reduce_convs`: the convolution operations (`sep_conv_*`,
  `dil_conv_*`) among the 8 chosen operations of the normal and the reduction cell;
- `normal_skips`: the `skip_connect` operations of the normal cell (the sign of
  DARTS's collapse when it grows);
- `params`: the trainable parameters of the evaluation network of the genotype at
  the search's own size (its C, cells, classes and input channels), auxiliary
  head excluded, as the reference code measures it (`network_params`).

`BySizeStore` keeps, for each (normal, reduction) convolution count, the genotype
of the epoch with the best search-val accuracy (the paper evaluates such
intermediate cells: 2.80% error at 2.87M parameters, 2.76% at 2.09M). The
reference code's early stop ends the search once the normal cell holds 6
convolutions and the reduction cell none (`reached`); the paper cuts its search
from about 8 to 5 hours this way.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os

from milenas_tf.core import files
from milenas_tf.space import genotypes

CONV_OPS = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
BY_SIZE_DIR = os.path.join("genotypes", "by_size")


@dataclasses.dataclass(frozen=True)
class CellSize:
  """The size figures of one derived genotype (see the module docstring)."""
  normal_convs: int
  reduce_convs: int
  normal_skips: int
  params: int

  def logs(self) -> dict[str, int]:
    """The figures as epoch-log entries."""
    return dataclasses.asdict(self)


def _count(pairs, names) -> int:
  return sum(1 for op, _ in pairs if op in names)


def conv_counts(genotype: genotypes.Genotype) -> tuple[int, int]:
  """(convolutions of the normal cell, convolutions of the reduction cell)."""
  return _count(genotype.normal, CONV_OPS), _count(genotype.reduce, CONV_OPS)


def _op_params(op: str, channels: int, stride: int) -> int:
  """Trainable parameters of one operation of the evaluation cell on `channels` channels."""
  c = channels
  if op.startswith(("sep_conv", "dil_conv")):
    k = int(op[-1])
    stage = c * k * k + c * c + 2 * c  # depthwise k x k, pointwise 1 x 1, batch norm
    return 2 * stage if op.startswith("sep_conv") else stage
  if op == "skip_connect" and stride == 2:
    return c * c + 2 * c  # factorized reduce: two 1 x 1 convs to c/2 channels, batch norm
  return 0  # pools, identity and none


def network_params(genotype: genotypes.Genotype, init_channels: int, num_cells: int,
                   num_classes: int, input_channels: int) -> int:
  """Trainable parameters of the CIFAR evaluation network of a genotype, no auxiliary head.

  Counted from the architecture, without building it: a 3x3 conv stem to 3C channels
  with batch norm; per cell, two preprocessing 1 x 1 convs (or a factorized reduce)
  with batch norm and the cell's operations, the channels doubling at the cells
  L/3 and 2L/3; the linear classifier. `train.model_size.count_parameters` of the
  built network gives the same number (a test).
  """
  stem = 3 * init_channels
  total = input_channels * stem * 9 + 2 * stem
  prev_prev, prev, channels = stem, stem, init_channels
  for i in range(num_cells):
    reduction = i in (num_cells // 3, 2 * num_cells // 3)
    channels *= 2 if reduction else 1
    total += (prev_prev + prev) * channels + 4 * channels  # the two preprocessing convs
    cell = "reduce" if reduction else "normal"
    for op, source in getattr(genotype, cell):
      stride = 2 if reduction and source < genotypes.NUM_INPUTS else 1
      total += _op_params(op, channels, stride)
    prev_prev, prev = prev, len(getattr(genotype, f"{cell}_concat")) * channels
  return total + prev * num_classes + num_classes


class SizeMeter:
  """Measures derived genotypes for a search of a given size.

  Args:
    num_classes: classes of the search's dataset.
    input_shape: `(height, width, channels)` of its images.
    init_channels: the search's C.
    num_cells: the search's number of cells.
  """

  def __init__(self, num_classes: int, input_shape: tuple[int, int, int],
               init_channels: int, num_cells: int):
    self.num_classes, self.input_channels = num_classes, int(input_shape[-1])
    self.init_channels, self.num_cells = init_channels, num_cells

  def params(self, genotype: genotypes.Genotype) -> int:
    """Trainable parameters of the genotype's network at the search's size."""
    return network_params(genotype, self.init_channels, self.num_cells, self.num_classes,
                          self.input_channels)

  def measure(self, genotype: genotypes.Genotype) -> CellSize:
    """All size figures of a genotype."""
    normal, reduce = conv_counts(genotype)
    return CellSize(normal, reduce, _count(genotype.normal, ("skip_connect",)),
                    self.params(genotype))


def reached(size: CellSize, normal_convs: int, reduce_convs: int) -> bool:
  """Whether the derived cells hold exactly the target convolution counts.

  A negative `normal_convs` turns the early stop off.
  """
  return (normal_convs >= 0 and size.normal_convs == normal_convs
          and size.reduce_convs == reduce_convs)


class BySizeStore:
  """The best search-val genotype for each (normal, reduction) convolution count.

  One file per count, `genotypes/by_size/n{N}_r{R}.json`: the genotype with its
  epoch, search-val accuracy and parameters. The files are the store's state, so
  a resumed search goes on comparing against them.

  Args:
    output_dir: the search's output directory.
  """

  def __init__(self, output_dir: str):
    self.directory = os.path.join(output_dir, BY_SIZE_DIR)

  def path(self, normal_convs: int, reduce_convs: int) -> str:
    """The file of one convolution count."""
    return os.path.join(self.directory, f"n{normal_convs}_r{reduce_convs}.json")

  def update(self, genotype: genotypes.Genotype, size: CellSize, val_accuracy: float,
             epoch: int) -> bool:
    """Keeps the genotype if it beats the stored one of its size; returns whether it did.

    Ties keep the earlier epoch.
    """
    path = self.path(size.normal_convs, size.reduce_convs)
    if os.path.exists(path):
      with open(path) as f:
        stored = json.load(f)
      if stored["val_accuracy"] >= val_accuracy and stored["epoch"] != epoch:
        return False
    genotypes.save_genotype(genotype, path, metadata={
        "epoch": epoch, "val_accuracy": float(val_accuracy), **size.logs()})
    return True

  def entries(self) -> list[dict]:
    """Every stored size, fewest convolutions first: the file's content and its path."""
    found = []
    for path in glob.glob(os.path.join(self.directory, "n*_r*.json")):
      with open(path) as f:
        found.append({**json.load(f), "path": path})
    return sorted(found, key=lambda e: (e["normal_convs"], e["reduce_convs"]))


def plot(records: list[dict], path: str) -> None:
  """The size figures of an epoch log against the epoch, as a PNG.

  Args:
    records: epoch-log records holding the `CellSize` entries.
    path: the PNG to write.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top

  records = [r for r in records if "params" in r]
  epochs = [r["epoch"] for r in records]
  fig = Figure(figsize=(10, 4))
  FigureCanvasAgg(fig)
  params, counts = fig.subplots(1, 2)
  params.plot(epochs, [r["params"] / 1e6 for r in records], marker="o")
  params.set(xlabel="epoch", ylabel="parameters (M)",
             title="derived network at the search's size")
  for key, label in (("normal_convs", "convolutions, normal cell"),
                     ("reduce_convs", "convolutions, reduction cell"),
                     ("normal_skips", "skip_connect, normal cell")):
    counts.plot(epochs, [r[key] for r in records], marker="o", label=label)
  counts.set(xlabel="epoch", ylabel="operations (of 8)", ylim=(-0.3, 8.3))
  counts.legend()
  for ax in (params, counts):
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  fig.tight_layout()
  files.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"),
                     suffix=".png")
