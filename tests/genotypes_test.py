"""Tests for milenas_tf.space.genotypes and milenas_tf.space.drawing."""

import importlib.resources
import json
import math
import os

import numpy as np
import pytest

from milenas_tf.core.errors import UserInputError
from milenas_tf.space import drawing
from milenas_tf.space import genotypes

P = {name: k for k, name in enumerate(genotypes.PRIMITIVES)}

DARTS_V2_NORMAL = (
    ("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
    ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2))
DARTS_V2_REDUCE = (
    ("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
    ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1))


def _valid_dict():
  return genotypes.published_genotypes()["DARTS_V2"].to_dict()


# --- Search-space layout ---------------------------------------------------


def test_primitives_order():
  assert genotypes.PRIMITIVES == (
      "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
      "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")


def test_edges_and_edge_index_agree():
  all_edges = genotypes.edges()
  assert len(all_edges) == genotypes.NUM_EDGES == 14
  assert all_edges[:5] == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
  assert all_edges[-1] == (3, 4)
  for e, (node, source) in enumerate(all_edges):
    assert genotypes.edge_index(node, source) == e
  # Node by node: node i owns i + 2 consecutive edges.
  assert [sum(1 for n, _ in all_edges if n == i) for i in range(4)] == [2, 3, 4, 5]


@pytest.mark.parametrize("node,source", [(-1, 0), (4, 0), (0, 2), (3, 5), (1, -1)])
def test_edge_index_rejects_out_of_range(node, source):
  with pytest.raises(ValueError):
    genotypes.edge_index(node, source)


# --- Derivation ---------------------------------------------------------------


def _hand_made_alphas():
  """Logits whose derived normal cell is worked out by hand below."""
  a = np.zeros((14, 8))

  def edge(node, source):
    return genotypes.edge_index(node, source)

  # Node 0: both edges kept, the stronger one (source 1) listed first.
  a[edge(0, 0), P["skip_connect"]] = 1.0  # weight 0.280
  a[edge(0, 1), P["avg_pool_3x3"]] = 2.0  # weight 0.513
  # Node 1: source 2 is dominated by 'none' (weight ~1); its best real op
  # has weight 3e-4, so the edge is dropped.
  a[edge(1, 0), P["sep_conv_3x3"]] = 3.0  # 0.742
  a[edge(1, 1), P["skip_connect"]] = 2.0  # 0.513
  a[edge(1, 2), P["none"]] = 10.0
  a[edge(1, 2), P["dil_conv_5x5"]] = 2.0
  # Node 2: 'none' has the largest weight on source 3, yet its best real op
  # (max_pool, 0.269) beats the uniform edges (0.125): kept with max_pool.
  # Sources 0..2 tie exactly: the earlier edge wins, and so does the
  # earlier op.
  a[edge(2, 3), P["none"]] = 10.0
  a[edge(2, 3), P["max_pool_3x3"]] = 9.0
  # Node 3: source 2 has the largest logits (5 on every real op) but its
  # softmax weights are only 0.143 each: scores are weights, not logits.
  a[edge(3, 1), P["dil_conv_3x3"]] = 3.0  # 0.742
  a[edge(3, 2), 1:] = 5.0  # 0.143
  a[edge(3, 4), P["sep_conv_5x5"]] = 4.0  # 0.886
  expected = (
      ("avg_pool_3x3", 1), ("skip_connect", 0),
      ("sep_conv_3x3", 0), ("skip_connect", 1),
      ("max_pool_3x3", 3), ("max_pool_3x3", 0),
      ("sep_conv_5x5", 4), ("dil_conv_3x3", 1),
  )
  return a, expected


UNIFORM_CELL = (("max_pool_3x3", 0), ("max_pool_3x3", 1)) * 4


def test_derive_hand_made_normal_cell():
  alphas, expected = _hand_made_alphas()
  genotype = genotypes.derive_genotype(alphas, np.zeros((14, 8)))
  assert genotype.normal == expected
  assert genotype.reduce == UNIFORM_CELL
  assert genotype.normal_concat == genotype.reduce_concat == (2, 3, 4, 5)


def test_derive_reduce_cell_uses_only_alphas_reduce():
  alphas, expected = _hand_made_alphas()
  genotype = genotypes.derive_genotype(np.zeros((14, 8)), alphas)
  assert genotype.reduce == expected
  assert genotype.normal == UNIFORM_CELL


def _brute_force_cell(logits):
  """DARTS `parse` with plain loops and a float64 softmax."""
  pairs, row = [], 0
  for node in range(4):
    candidates = []
    for source in range(node + 2):
      values = [float(v) for v in logits[row]]
      row += 1
      top = max(values)
      exps = [math.exp(v - top) for v in values]
      weights = [e / sum(exps) for e in exps]
      best = None
      for k in range(1, len(weights)):  # Skip 'none' (column 0).
        if best is None or weights[k] > weights[best]:
          best = k
      candidates.append((weights[best], source, genotypes.PRIMITIVES[best]))
    for _, source, op in sorted(candidates, key=lambda c: -c[0])[:2]:
      pairs.append((op, source))
  return tuple(pairs)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("scale", [1e-3, 1.0, 4.0])
def test_derive_matches_brute_force(seed, scale):
  rng = np.random.default_rng(seed)
  normal = rng.normal(scale=scale, size=(14, 8)).astype(np.float32)
  reduce = rng.normal(scale=scale, size=(14, 8)).astype(np.float32)
  genotype = genotypes.derive_genotype(normal, reduce)
  assert genotype.normal == _brute_force_cell(normal)
  assert genotype.reduce == _brute_force_cell(reduce)


def test_derive_accepts_tensors_and_variables():
  tf = pytest.importorskip("tensorflow")
  keras = pytest.importorskip("keras")
  alphas, expected = _hand_made_alphas()
  genotype = genotypes.derive_genotype(
      tf.constant(alphas, tf.float32), keras.Variable(np.zeros((14, 8), np.float32)))
  assert genotype.normal == expected
  assert genotype.reduce == UNIFORM_CELL


@pytest.mark.parametrize("bad,message", [
    (np.zeros((14, 7)), "shape (14, 7)"),
    (np.zeros((8,)), "expected (14, 8)"),
    ([["a"] * 8] * 14, "numeric"),
    (np.full((14, 8), np.nan), "NaN"),
])
def test_derive_rejects_bad_alphas(bad, message):
  with pytest.raises(UserInputError, match="alphas_reduce") as e:
    genotypes.derive_genotype(np.zeros((14, 8)), bad)
  assert message in str(e.value)


def test_alpha_weights_table():
  alphas, _ = _hand_made_alphas()
  lines = genotypes.alpha_weights_table(alphas).splitlines()
  assert len(lines) == 15
  assert all(p in lines[0] for p in genotypes.PRIMITIVES)
  assert lines[1].startswith("(2<-0)") and lines[-1].startswith("(5<-4)")
  # Edge (3 <- 2) of node 1 (row 5): 'none' dominates.
  assert lines[5].startswith("(3<-2)") and lines[5].split()[1] == "0.999"
  assert "0.125" in lines[6]  # Uniform edge (4<-0).


# --- Genotype, JSON and published genotypes -----------------------------------


def test_genotype_dict_round_trip_and_str():
  genotype = genotypes.published_genotypes()["DARTS_V2"]
  d = genotype.to_dict()
  assert json.loads(json.dumps(d)) == d
  assert d["normal"][0] == ["sep_conv_3x3", 0]
  assert genotypes.Genotype.from_dict(d) == genotype
  text = str(genotype)
  assert "\n" not in text
  assert "dil_conv_3x3(2)" in text and "reduce=" in text


def test_save_load_round_trip(tmp_path):
  genotype = genotypes.derive_genotype(*_hand_made_alphas()[:1], np.zeros((14, 8)))
  path = tmp_path / "run" / "search" / "genotype.json"
  genotypes.save_genotype(genotype, path)
  assert genotypes.load_genotype(str(path)) == genotype
  assert genotypes.load_genotype(path) == genotype  # os.PathLike.
  assert os.listdir(path.parent) == ["genotype.json"]  # No temporary file left.


def test_save_with_metadata_wraps_genotype(tmp_path):
  genotype = genotypes.published_genotypes()["DARTS_V1"]
  path = tmp_path / "genotype.json"
  genotypes.save_genotype(genotype, path, metadata={"epoch": 49, "method": "milenas"})
  data = json.loads(path.read_text())
  assert data["epoch"] == 49 and data["genotype"] == genotype.to_dict()
  assert genotypes.load_genotype(str(path)) == genotype
  with pytest.raises(UserInputError, match="metadata"):
    genotypes.save_genotype(genotype, path, metadata={"genotype": 1})


def test_save_rejects_invalid_genotype(tmp_path):
  bad = genotypes.Genotype(normal=(("conv_7x7", 0),) * 8, normal_concat=(2, 3, 4, 5),
                           reduce=UNIFORM_CELL, reduce_concat=(2, 3, 4, 5))
  with pytest.raises(UserInputError, match="conv_7x7"):
    genotypes.save_genotype(bad, tmp_path / "g.json")
  assert not os.listdir(tmp_path)


def test_published_darts_v2():
  darts_v2 = genotypes.load_genotype("DARTS_V2")
  assert darts_v2.normal == DARTS_V2_NORMAL
  assert darts_v2.reduce == DARTS_V2_REDUCE
  assert darts_v2.normal_concat == darts_v2.reduce_concat == (2, 3, 4, 5)


def test_published_names_and_aliases():
  published = genotypes.published_genotypes()
  assert set(published) == {"DARTS_V1", "DARTS_V2", "r101_e50_48_n7r3", "V2_r2_e100",
                            "v2_r5_e200", "GDAS_MIXED_LEVEL2"}
  names = genotypes.genotype_names()
  assert set(published) <= set(names)
  assert {"MILENAS_3_87M", "MILENAS_2_86M", "MILENAS_2_09M", "MILENAS_GDAS"} <= set(names)
  for name in names:
    for spelling in (name, name.lower(), name.upper()):
      assert isinstance(genotypes.load_genotype(spelling), genotypes.Genotype)
  assert genotypes.load_genotype("milenas_3_87m") == published["r101_e50_48_n7r3"]
  assert genotypes.load_genotype("darts_v2") == published["DARTS_V2"]


def test_packaged_json_keeps_sources():
  text = importlib.resources.files("milenas_tf.space").joinpath(
      "published_genotypes.json").read_text()
  entries = json.loads(text)["genotypes"]
  assert all(entry["source"] for entry in entries.values())


# --- Bad files and names ----------------------------------------------------------


def test_unknown_name_lists_available_names(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(UserInputError) as e:
    genotypes.load_genotype("DARTS_V3")
  message = str(e.value)
  assert "'DARTS_V3'" in message and "no such file" in message
  assert "DARTS_V2" in message and "MILENAS_3_87M" in message


def test_invalid_json_names_path_and_problem(tmp_path):
  path = tmp_path / "broken.json"
  path.write_text('{"normal": [["sep_conv_3x3", 0],')
  with pytest.raises(UserInputError) as e:
    genotypes.load_genotype(str(path))
  assert str(path) in str(e.value)
  assert "invalid JSON" in str(e.value) and "line 1" in str(e.value)


def _mutate(change):
  d = _valid_dict()
  change(d)
  return d


@pytest.mark.parametrize("data,substrings", [
    (_mutate(lambda d: d["normal"].__setitem__(2, ["conv_9x9", 0])),
     ["normal[2]", "unknown op 'conv_9x9'", "sep_conv_3x3"]),
    (_mutate(lambda d: d["normal"].__setitem__(5, ["none", 0])),
     ["normal[5]", "'none' cannot be chosen"]),
    (_mutate(lambda d: d["reduce"].__setitem__(1, ["max_pool_3x3", 2])),
     ["reduce[1]", "input index 2", "valid inputs are 0..1"]),
    (_mutate(lambda d: d["reduce"].__setitem__(7, ["max_pool_3x3", 5])),
     ["reduce[7]", "input index 5", "0..4"]),
    (_mutate(lambda d: d["normal"].__setitem__(0, ["max_pool_3x3", "1"])),
     ["normal[0]", "integer"]),
    (_mutate(lambda d: d["normal"].pop()),
     ["normal has 7", "needs 8"]),
    (_mutate(lambda d: d["normal"].__setitem__(3, ["skip_connect"])),
     ["normal[3]", "pair"]),
    (_mutate(lambda d: d.pop("reduce")),
     ["missing the 'reduce' key"]),
    (_mutate(lambda d: d.__setitem__("reduce_concat", [2, 6])),
     ["reduce_concat", "node 6"]),
    ([["sep_conv_3x3", 0]] * 8,
     ["JSON object"]),
])
def test_malformed_genotype_files(tmp_path, data, substrings):
  path = tmp_path / "genotype.json"
  path.write_text(json.dumps(data))
  with pytest.raises(UserInputError) as e:
    genotypes.load_genotype(str(path))
  message = str(e.value)
  assert str(path) in message
  for substring in substrings:
    assert substring in message


def test_load_wrapped_genotype_validates_inner_object(tmp_path):
  d = _valid_dict()
  d["normal"][4] = ["sep_conv_3x3", 9]
  path = tmp_path / "genotype.json"
  path.write_text(json.dumps({"genotype": d, "epoch": 3}))
  with pytest.raises(UserInputError, match=r"normal\[4\]: input index 9"):
    genotypes.load_genotype(str(path))


# --- Plotting ----------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["normal", "reduce"])
def test_plot_genotype_writes_png(tmp_path, cell):
  path = tmp_path / "plots" / f"{cell}.png"
  drawing.plot_genotype(genotypes.load_genotype("MILENAS_GDAS"), path, cell=cell)
  data = path.read_bytes()
  assert data.startswith(b"\x89PNG\r\n\x1a\n")
  assert len(data) > 5000


def test_plot_genotype_rejects_unknown_cell(tmp_path):
  with pytest.raises(UserInputError, match="'normal' or 'reduce'"):
    drawing.plot_genotype(genotypes.load_genotype("DARTS_V2"), tmp_path / "x.png",
                          cell="reduction")
