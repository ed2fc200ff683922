"""DARTS search space: primitives, edge layout, genotypes and their derivation.

A cell has two input nodes (input 0: output of cell k-2, input 1: output of
cell k-1) and `NUM_NODES` intermediate nodes. Intermediate node `i`
(0-based; input index `i + 2` inside a genotype) has one edge from every
earlier node `j = 0 .. i + 1`. Edges are numbered node by node, so the
architecture parameters of a cell type are an array of shape
`(NUM_EDGES, len(PRIMITIVES))`.

A `Genotype` lists, for each intermediate node in order, the two
`(op_name, input_index)` pairs it keeps, as in the DARTS code.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import os
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from milenas_tf.core import files
from milenas_tf.core.errors import UserInputError

PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)


NUM_INPUTS = 2


NUM_NODES = 4


NUM_EDGES = 14


EDGES_PER_NODE = 2


DEFAULT_CONCAT: tuple[int, ...] = tuple(range(NUM_INPUTS, NUM_INPUTS + NUM_NODES))


CELL_TYPES = ("normal", "reduce")


_NONE = PRIMITIVES.index("none")


_GENOTYPE_OPS = tuple(p for p in PRIMITIVES if p != "none")


_PUBLISHED_FILE = "published_genotypes.json"


def edge_index(node: int, source: int) -> int:
  """Returns the row of α for the edge `source -> node`.

  Args:
    node: intermediate node, 0-based (`0 .. NUM_NODES - 1`).
    source: source node as a genotype input index (`0 .. node + 1`).

  Returns:
    The edge index in `0 .. NUM_EDGES - 1`.

  Raises:
    ValueError: if `node` or `source` is out of range.
  """
  if not 0 <= node < NUM_NODES:
    raise ValueError(f"node must be in [0, {NUM_NODES}), got {node}.")
  if not 0 <= source < node + NUM_INPUTS:
    raise ValueError(
        f"source of node {node} must be in [0, {node + NUM_INPUTS}), got {source}.")
  return node * (node + 3) // 2 + source


def edges() -> list[tuple[int, int]]:
  """Returns `(node, source)` for every edge, in edge-index order."""
  return [(i, j) for i in range(NUM_NODES) for j in range(i + NUM_INPUTS)]


def _softmax(logits: np.ndarray) -> np.ndarray:
  shifted = logits - logits.max(axis=-1, keepdims=True)
  e = np.exp(shifted)
  return e / e.sum(axis=-1, keepdims=True)


def _to_numpy(alphas: Any, name: str) -> np.ndarray:
  """Converts α (numpy, tf.Tensor, keras.Variable, lists) to validated float64."""
  if hasattr(alphas, "numpy"):
    alphas = alphas.numpy()
  try:
    array = np.asarray(alphas, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise UserInputError(f"{name} must be a numeric array of shape "
                         f"({NUM_EDGES}, {len(PRIMITIVES)}): {e}") from e
  if array.shape != (NUM_EDGES, len(PRIMITIVES)):
    raise UserInputError(
        f"{name} has shape {array.shape}; expected ({NUM_EDGES}, {len(PRIMITIVES)}) "
        "(edges x primitives).")
  if not np.all(np.isfinite(array)):
    raise UserInputError(f"{name} contains NaN or infinite values; the search diverged "
                         "(lower the learning rates or restart from a checkpoint).")
  return array


def alpha_weights_table(alphas: Any) -> str:
  """Formats softmax(α) as a text table, one row per edge.

  Rows are labelled `(node<-src)` with genotype input indices (nodes 2..5,
  sources 0..4), columns are the primitives.

  Args:
    alphas: logits of shape `(NUM_EDGES, len(PRIMITIVES))`.

  Returns:
    A multi-line string.

  Raises:
    UserInputError: if `alphas` has the wrong shape or non-finite values.
  """
  weights = _softmax(_to_numpy(alphas, "alphas"))
  width = max(len(p) for p in PRIMITIVES)
  lines = ["edge".ljust(8) + " ".join(p.rjust(width) for p in PRIMITIVES)]
  for e, (node, source) in enumerate(edges()):
    label = f"({node + NUM_INPUTS}<-{source})"
    lines.append(label.ljust(8) + " ".join(f"{w:{width}.3f}" for w in weights[e]))
  return "\n".join(lines)


class Genotype(NamedTuple):
  """A discrete cell architecture, in the DARTS format.

  Attributes:
    normal: 8 `(op_name, input_index)` pairs of the normal cell, two per
      intermediate node in node order.
    normal_concat: nodes concatenated into the normal cell's output.
    reduce: the same as `normal`, for the reduction cell.
    reduce_concat: the same as `normal_concat`, for the reduction cell.
  """
  normal: tuple[tuple[str, int], ...]
  normal_concat: tuple[int, ...]
  reduce: tuple[tuple[str, int], ...]
  reduce_concat: tuple[int, ...]

  def to_dict(self) -> dict[str, list[Any]]:
    """Returns a JSON-friendly dict (lists instead of tuples)."""
    return {
        "normal": [[op, int(j)] for op, j in self.normal],
        "normal_concat": [int(n) for n in self.normal_concat],
        "reduce": [[op, int(j)] for op, j in self.reduce],
        "reduce_concat": [int(n) for n in self.reduce_concat],
    }

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> Genotype:
    """Builds a validated genotype from a dict such as `to_dict()` returns.

    Missing `*_concat` keys default to `DEFAULT_CONCAT`; other keys (e.g.
    "source") are ignored.

    Args:
      d: a mapping with keys "normal" and "reduce" (and optionally
        "normal_concat", "reduce_concat").

    Returns:
      A `Genotype` made of tuples.

    Raises:
      UserInputError: naming the first invalid field and entry.
    """
    if not isinstance(d, Mapping):
      raise UserInputError(
          f"A genotype must be a JSON object/dict, got {type(d).__name__}.")
    fields = {}
    for cell in CELL_TYPES:
      if cell not in d:
        raise UserInputError(f"Genotype is missing the {cell!r} key; expected keys "
                             "'normal', 'normal_concat', 'reduce', 'reduce_concat'.")
      fields[cell] = _parse_pairs(d[cell], cell)
      concat_key = f"{cell}_concat"
      fields[concat_key] = _parse_concat(d.get(concat_key, DEFAULT_CONCAT), concat_key)
    return cls(**fields)

  def __str__(self) -> str:

    def cell_text(pairs, concat):
      nodes = []
      for i in range(len(pairs) // EDGES_PER_NODE):
        ops = pairs[i * EDGES_PER_NODE:(i + 1) * EDGES_PER_NODE]
        nodes.append(f"{i + NUM_INPUTS}<-" + " + ".join(f"{op}({j})" for op, j in ops))
      return f"[{', '.join(nodes)}] concat={list(concat)}"

    return (f"Genotype(normal={cell_text(self.normal, self.normal_concat)}; "
            f"reduce={cell_text(self.reduce, self.reduce_concat)})")


def _is_int(x: Any) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _parse_pairs(pairs: Any, cell: str) -> tuple[tuple[str, int], ...]:
  expected = NUM_NODES * EDGES_PER_NODE
  if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
    raise UserInputError(
        f"{cell} must be a list of {expected} [op, input_index] pairs, got {pairs!r}.")
  if len(pairs) != expected:
    raise UserInputError(
        f"{cell} has {len(pairs)} [op, input_index] pairs; a cell needs {expected} "
        f"({EDGES_PER_NODE} per intermediate node).")
  result = []
  for k, pair in enumerate(pairs):
    where = f"{cell}[{k}]"
    if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
      raise UserInputError(f"{where} must be an [op, input_index] pair, got {pair!r}.")
    op, j = pair
    if op not in _GENOTYPE_OPS:
      hint = " ('none' cannot be chosen)" if op == "none" else ""
      raise UserInputError(f"{where}: unknown op {op!r}{hint}; valid ops: "
                           f"{', '.join(_GENOTYPE_OPS)}.")
    node = k // EDGES_PER_NODE
    if not _is_int(j):
      raise UserInputError(f"{where}: input index must be an integer, got {j!r}.")
    if not 0 <= j < node + NUM_INPUTS:
      raise UserInputError(
          f"{where}: input index {j!r} is not valid for node {node + NUM_INPUTS} "
          f"(pair {k} belongs to intermediate node {node}); valid inputs are "
          f"0..{node + NUM_INPUTS - 1}.")
    result.append((str(op), int(j)))
  return tuple(result)


def _parse_concat(concat: Any, key: str) -> tuple[int, ...]:
  lo, hi = NUM_INPUTS, NUM_INPUTS + NUM_NODES - 1
  if isinstance(concat, (str, bytes)) or not isinstance(concat, (Sequence, range)):
    raise UserInputError(f"{key} must be a list of node indices in {lo}..{hi}, "
                         f"got {concat!r}.")
  if not concat:
    raise UserInputError(f"{key} is empty; use e.g. {list(DEFAULT_CONCAT)}.")
  for n in concat:
    if not _is_int(n) or not lo <= n <= hi:
      raise UserInputError(f"{key}: node {n!r} is not an intermediate node; "
                           f"valid nodes are {lo}..{hi}.")
  if len(set(concat)) != len(concat):
    raise UserInputError(f"{key} lists a node twice: {list(concat)}.")
  return tuple(int(n) for n in concat)


def _parse_cell(weights: np.ndarray) -> tuple[tuple[str, int], ...]:
  """DARTS `parse`: top-2 incoming edges per node by strongest non-none weight."""
  masked = weights.copy()
  masked[:, _NONE] = -np.inf
  best_op = np.argmax(masked, axis=1)  # First maximum: ties go to the earlier op.
  score = masked.max(axis=1)
  pairs = []
  for i in range(NUM_NODES):
    start = edge_index(i, 0)
    node_scores = score[start:start + i + NUM_INPUTS]
    # Stable sort on -score: equal scores keep the earlier edge first.
    for j in np.argsort(-node_scores, kind="stable")[:EDGES_PER_NODE]:
      pairs.append((PRIMITIVES[best_op[start + j]], int(j)))
  return tuple(pairs)


def derive_genotype(alphas_normal: Any, alphas_reduce: Any) -> Genotype:
  """Derives the discrete genotype from architecture logits, as DARTS does.

  For each intermediate node, keeps the 2 incoming edges whose strongest
  non-`none` softmax weight is largest; each kept edge gets its argmax op
  excluding `none`. The kept pairs are listed by decreasing score.

  Args:
    alphas_normal: logits of the normal cell, shape `(14, 8)`; a numpy
      array, tensor or variable.
    alphas_reduce: logits of the reduction cell, shape `(14, 8)`.

  Returns:
    The derived `Genotype`, concatenating nodes 2..5.

  Raises:
    UserInputError: if an array has the wrong shape or non-finite values.
  """
  normal = _softmax(_to_numpy(alphas_normal, "alphas_normal"))
  reduce = _softmax(_to_numpy(alphas_reduce, "alphas_reduce"))
  return Genotype(normal=_parse_cell(normal), normal_concat=DEFAULT_CONCAT,
                  reduce=_parse_cell(reduce), reduce_concat=DEFAULT_CONCAT)


def as_genotype(genotype: Any) -> Genotype:
  """A genotype from a `Genotype`, a dict, a DARTS-style namedtuple, a published
  name or alias, or a JSON file.

  Raises:
    UserInputError: for anything else, or an invalid genotype.
  """
  if isinstance(genotype, (str, os.PathLike)):
    return load_genotype(genotype)
  if isinstance(genotype, Mapping):
    return Genotype.from_dict(genotype)
  if hasattr(genotype, "_asdict"):
    return Genotype.from_dict(genotype._asdict())
  raise UserInputError(f"Expected a Genotype, got {type(genotype).__name__}.")


def save_genotype(genotype: Genotype, path: str | os.PathLike[str],
                  metadata: Mapping[str, Any] | None = None) -> None:
  """Writes a genotype as JSON, atomically; creates parent directories.

  Args:
    genotype: the genotype to save (validated before writing).
    path: destination file.
    metadata: optional JSON-serialisable extras (e.g. {"epoch": 49}). When
      given, the file is `{"genotype": {...}, **metadata}`.

  Raises:
    UserInputError: if the genotype is invalid or the metadata has a
      "genotype" key.
  """
  data = as_genotype(genotype).to_dict()
  if metadata is not None:
    if "genotype" in metadata:
      raise UserInputError("metadata must not contain a 'genotype' key.")
    data = {"genotype": data, **metadata}
  files.write_text_atomic(path, json.dumps(data, indent=2) + "\n")


@functools.lru_cache(maxsize=1)
def _published() -> tuple[dict[str, Genotype], dict[str, str], tuple[str, ...]]:
  """Returns (genotypes by name, lower-cased name/alias -> name, names and aliases)."""
  text = importlib.resources.files(__package__).joinpath(_PUBLISHED_FILE).read_text(
      encoding="utf-8")
  entries = json.loads(text)["genotypes"]
  by_name, lookup, names = {}, {}, []
  for name, entry in entries.items():
    by_name[name] = Genotype.from_dict(entry)
    for key in (name, entry.get("alias")):
      if key:
        lookup[key.lower()] = name
        names.append(key)
  return by_name, lookup, tuple(names)


def published_genotypes() -> dict[str, Genotype]:
  """Returns the published genotypes shipped with the package, by canonical name."""
  return dict(_published()[0])


def genotype_names() -> list[str]:
  """Returns the published genotype names, each followed by its alias if any."""
  return list(_published()[2])


def load_genotype(path_or_name: str | os.PathLike[str]) -> Genotype:
  """Loads a published genotype by name or alias, or a genotype JSON file.

  Names are matched case-insensitively and take precedence over files. A file
  holds either the genotype object itself or `{"genotype": {...}, ...}` (as
  `save_genotype` writes with metadata).

  Args:
    path_or_name: e.g. "DARTS_V2", "milenas_3_87m" or "runs/search/genotype.json".

  Returns:
    The validated `Genotype`.

  Raises:
    UserInputError: for an unknown name with no such file, unreadable or
      malformed JSON, or an invalid genotype.
  """
  if isinstance(path_or_name, str):
    by_name, lookup, _ = _published()
    name = lookup.get(path_or_name.strip().lower())
    if name is not None:
      return by_name[name]
  path = os.fspath(path_or_name)
  if not os.path.exists(path):
    raise UserInputError(
        f"Unknown genotype {path_or_name!r}: not a published name and no such file. "
        f"Available names: {', '.join(genotype_names())}.")
  if os.path.isdir(path):
    raise UserInputError(f"{path} is a directory; pass a genotype JSON file or a name.")
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise UserInputError(
        f"{path}: invalid JSON ({e.msg} at line {e.lineno}, column {e.colno}).") from e
  except (OSError, UnicodeDecodeError) as e:
    raise UserInputError(f"{path}: cannot read the genotype file ({e}).") from e
  if isinstance(data, Mapping) and "normal" not in data and "genotype" in data:
    data = data["genotype"]
  try:
    return Genotype.from_dict(data)
  except UserInputError as e:
    raise UserInputError(f"{path}: {e}") from e
