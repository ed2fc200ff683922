"""Output directories: which saved configurations a run resumes and which it refuses."""

import json

import pytest

from milenas_tf.core import run_directory
from milenas_tf.core.errors import UserInputError

DEFAULTS = {"epochs": 50, "batch_size": 64, "distribution": "auto", "data_dir": ""}


def write_config(path, config):
  path.mkdir(exist_ok=True)
  (path / run_directory.CONFIG_FILE).write_text(json.dumps(config))


def check(path, config, defaults=DEFAULTS):
  return run_directory.check_output_dir(str(path), config, "search", defaults=defaults)


def test_new_or_empty_directory_is_a_new_run(tmp_path):
  assert check(tmp_path / "missing", DEFAULTS) is False
  assert check(tmp_path, DEFAULTS) is False


def test_same_configuration_resumes(tmp_path):
  write_config(tmp_path, DEFAULTS)
  assert check(tmp_path, dict(DEFAULTS)) is True


def test_resume_free_keys_may_differ(tmp_path):
  write_config(tmp_path, DEFAULTS)
  assert check(tmp_path, {**DEFAULTS, "data_dir": "/data", "distribution": "default",
                          "remapping": "on", "graph_optimizer": "full"})


def test_a_key_the_saved_run_lacks_counts_as_its_default(tmp_path):
  old = {k: v for k, v in DEFAULTS.items() if k != "batch_size"}  # written before the key
  write_config(tmp_path, old)
  assert check(tmp_path, dict(DEFAULTS)) is True
  with pytest.raises(UserInputError, match="batch_size: 64 in the run, 32 now"):
    check(tmp_path, {**DEFAULTS, "batch_size": 32})
  with pytest.raises(UserInputError, match="batch_size: None in the run, 64 now"):
    check(tmp_path, dict(DEFAULTS), defaults=None)  # without defaults: refused


def test_another_configuration_is_refused_with_the_difference(tmp_path):
  write_config(tmp_path, DEFAULTS)
  with pytest.raises(UserInputError, match=r"holds a search with another configuration "
                     r"\(epochs: 50 in the run, 3 now\).*choose another --output_dir"):
    check(tmp_path, {**DEFAULTS, "epochs": 3})


def test_unreadable_configuration_is_refused(tmp_path):
  (tmp_path / run_directory.CONFIG_FILE).write_text("{not json")
  with pytest.raises(UserInputError, match="is unreadable"):
    check(tmp_path, DEFAULTS)


def test_foreign_directory_is_refused(tmp_path):
  (tmp_path / "notes.txt").write_text("mine")
  with pytest.raises(UserInputError, match="not empty and holds no search"):
    check(tmp_path, DEFAULTS)


def test_a_directory_of_another_kind_of_run_says_so(tmp_path):
  write_config(tmp_path, {**DEFAULTS, "genotype": "DARTS_V2", "setting": "cifar10",
                          "auxiliary": True})
  with pytest.raises(UserInputError, match=r"holds another kind of run than a search \(its "
                     r"configuration has auxiliary, genotype, setting, \.\.\.\); choose "
                     "another --output_dir"):
    check(tmp_path, dict(DEFAULTS))
  # One field more is another configuration, not another kind of run.
  write_config(tmp_path, {**DEFAULTS, "genotype": "DARTS_V2"})
  with pytest.raises(UserInputError, match="holds a search with another configuration"):
    check(tmp_path, dict(DEFAULTS))
