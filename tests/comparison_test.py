"""The method comparison's report over several seeds: means and deviations by hand, and
the report of runs already finished."""

import json
import math
import re

import ml_collections
import pytest

from milenas_tf.core.errors import UserInputError
from milenas_tf.search import comparison
from milenas_tf.search import config as search_config
from milenas_tf.space import genotypes

GENOTYPE = genotypes.load_genotype("DARTS_V2")


def run(seed, seconds, accuracy):
  records = [{"epoch": e + 1, "seconds": s, "val_accuracy": a}
             for e, (s, a) in enumerate(zip(seconds, accuracy))]
  return comparison.summarize("milenas", records, GENOTYPE, seed)


def test_mean_and_sample_deviation_per_epoch():
  runs = [run(2, [30.0, 10.0, 12.0], [0.5, 0.6, 0.7]),
          run(3, [34.0, 11.0, 13.0], [0.4, 0.7, 0.8]),
          run(4, [32.0, 12.0], [0.6, 0.8])]  # stopped early after epoch 2
  report = comparison.aggregate("milenas", runs)
  assert report["seeds"] == [2, 3, 4]
  assert report["val_accuracy"] == [0.5, 0.7, 0.75]
  # Sample deviation: sqrt(sum (x - mean)^2 / (n - 1)).
  assert report["val_accuracy_std"] == [0.1, 0.1, round(math.sqrt(0.005), 4)]
  assert report["epoch_s"] == [32.0, 11.0, 12.5]
  assert report["epoch_s_std"] == [2.0, 1.0, round(math.sqrt(0.5), 3)]
  # Steady epochs (the first one traces): run means 11, 12, 12.
  assert report["mean_epoch_s"] == 11.67
  assert report["mean_epoch_s_std"] == round(math.sqrt(((1 / 3) ** 2 * 2 + (2 / 3) ** 2) / 2), 2)
  assert report["final_val_accuracy"] == pytest.approx(0.7667, abs=1e-4)
  assert report["final_val_accuracy_std"] == round(math.sqrt(
      ((0.7 - 2.3 / 3) ** 2 + 2 * (0.8 - 2.3 / 3) ** 2) / 2), 4)
  assert [r["seed"] for r in report["runs"]] == [2, 3, 4]


def test_one_seed_has_no_deviation():
  report = comparison.aggregate("milenas", [run(2, [30.0, 10.0], [0.5, 0.6])])
  assert report["val_accuracy"] == [0.5, 0.6]
  assert report["val_accuracy_std"] == [0.0, 0.0]
  assert report["mean_epoch_s"] == 10.0 and report["mean_epoch_s_std"] == 0.0


def test_table_and_plot_show_the_spread(tmp_path):
  results = [comparison.aggregate("milenas", [run(2, [3.0, 1.0], [0.5, 0.6]),
                                              run(3, [3.0, 1.0], [0.7, 0.8])]),
             comparison.aggregate("darts_1st", [run(2, [3.0, 2.0], [0.4, 0.5])])]
  for r in results:
    r["epoch_time_vs_milenas"] = round(r["mean_epoch_s"] / results[0]["mean_epoch_s"], 2)
  table = comparison.markdown_table(results, "milenas")
  assert "| milenas | 2 | 1.0 ± 0.0 | 1.0 |" in table
  assert "0.600 ± 0.141 / 0.700 ± 0.141" in table
  assert "| darts_1st | 1 | 2.0 ± 0.0 | 2.0 |" in table
  comparison.plot(results, str(tmp_path / "c.png"))
  assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_seed_count_is_refused_before_any_run(tmp_path):
  with pytest.raises(UserInputError, match="--seeds must be a positive integer, got 0"):
    comparison.compare_methods(search_config.default_config(), str(tmp_path), seeds=0)
  assert not list(tmp_path.iterdir())


def test_sweep_is_parsed_to_the_field_type():
  config = search_config.default_config()
  assert comparison.parse_sweep("lambda_val=0.1, 1,10", config) == ("lambda_val",
                                                                    [0.1, 1.0, 10.0])
  assert comparison.parse_sweep("num_cells=5,8", config) == ("num_cells", [5, 8])
  assert comparison.parse_sweep("augment=false,True", config) == ("augment", [False, True])


@pytest.mark.parametrize("text, message", [
    ("lambda_val", "--sweep must be FIELD=V1,V2"),
    ("lambda=1,2", "--sweep names no field of the search config: 'lambda'"),
    ("seed=1,2", "--sweep cannot vary seed: use --methods and --seeds"),
    ("num_cells=5,six", "--sweep value 'six' does not fit config.num_cells (int)"),
])
def test_bad_sweep_is_refused(text, message):
  with pytest.raises(UserInputError, match=re.escape(message)):
    comparison.parse_sweep(text, search_config.default_config())


def test_a_bad_swept_value_is_refused_before_any_run(tmp_path):
  with pytest.raises(UserInputError, match="config.lambda_val"):
    comparison.compare_methods(search_config.default_config(), str(tmp_path), ["milenas"],
                               sweep=("lambda_val", [1.0, -1.0]))
  assert not list(tmp_path.iterdir())


def fake_run(run_dir, config, seconds, accuracy, final=True):
  """A search's files as a finished (or interrupted) run leaves them."""
  run_dir.mkdir(parents=True)
  (run_dir / "config.json").write_text(json.dumps(config.to_dict()))
  (run_dir / "epochs.jsonl").write_text("".join(
      json.dumps({"epoch": e + 1, "seconds": s, "val_accuracy": a}) + "\n"
      for e, (s, a) in enumerate(zip(seconds, accuracy))))
  genotypes.save_genotype(GENOTYPE, str(run_dir / "genotype.json"),
                          {"epoch": len(seconds), "final": final})


def test_report_only_reports_the_finished_runs_and_runs_nothing(tmp_path):
  config = search_config.default_config()
  seeded = lambda method, seed: ml_collections.ConfigDict(
      {**config.to_dict(), "method": method, "seed": seed})
  fake_run(tmp_path / "milenas" / "seed_2", seeded("milenas", 2), [3.0, 1.0], [0.5, 0.6])
  fake_run(tmp_path / "milenas" / "seed_3", seeded("milenas", 3), [3.0, 1.0], [0.7, 0.8])
  fake_run(tmp_path / "darts_1st" / "seed_2", seeded("darts_1st", 2), [3.0, 2.0],
           [0.4, 0.5])
  fake_run(tmp_path / "darts_1st" / "seed_3", seeded("darts_1st", 3), [3.0],
           [0.3], final=False)  # interrupted
  report = comparison.compare_methods(config, str(tmp_path),
                                      ["milenas", "darts_1st", "darts_2nd"], seeds=2,
                                      run=False)
  by_label = {r["label"]: r for r in report["methods"]}
  assert list(by_label) == ["milenas", "darts_1st"]  # darts_2nd has no run
  assert by_label["milenas"]["seeds"] == [2, 3]
  assert by_label["milenas"]["val_accuracy"] == [0.6, 0.7]
  assert by_label["darts_1st"]["seeds"] == [2]
  assert by_label["darts_1st"]["epoch_time_vs_milenas"] == 2.0
  assert not (tmp_path / "darts_2nd").exists()
  assert "| darts_1st | 1 |" in (tmp_path / "comparison.md").read_text()
  assert json.loads((tmp_path / "comparison.json").read_text())["seeds"] == 2


def test_report_only_refuses_runs_of_another_configuration_and_no_runs(tmp_path):
  config = search_config.default_config()
  other = ml_collections.ConfigDict({**config.to_dict(), "method": "milenas", "limit": 7})
  fake_run(tmp_path / "milenas", other, [3.0], [0.5])
  with pytest.raises(UserInputError, match=r"limit: 7 in the run, 0 now"):
    comparison.compare_methods(config, str(tmp_path), ["milenas"], run=False)
  with pytest.raises(UserInputError, match="holds no finished run of these methods"):
    comparison.compare_methods(config, str(tmp_path / "empty"), ["milenas"], run=False)


def test_report_only_names_a_damaged_genotype_file(tmp_path):
  config = search_config.default_config()
  run_dir = tmp_path / "milenas"
  fake_run(run_dir, ml_collections.ConfigDict({**config.to_dict(), "method": "milenas"}),
           [3.0], [0.5])
  (run_dir / "genotype.json").write_text('{"genotype": {"normal": [')
  with pytest.raises(UserInputError, match=r"genotype.json: invalid JSON"):
    comparison.compare_methods(config, str(tmp_path), ["milenas"], run=False)
