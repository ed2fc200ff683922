"""BUILD stays true to the tree: every file has a target, every dependency exists."""

import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIP_PACKAGES = {"tensorflow", "keras", "tensorflow-datasets", "absl-py", "numpy",
                "ml-collections", "matplotlib", "tensorboard", "grpcio", "pytest",
                "tensorflow-serving-api"}


def load_build():
  """Evaluates BUILD (Starlark in its Python subset) with recording stand-ins."""
  targets = {}

  def rule(kind):
    def record(name, **kwargs):
      assert name not in targets, f"duplicate target {name}"
      targets[name] = dict(kind=kind, **kwargs)
    return record

  scope = {"load": lambda *a: None, "package": lambda **kw: None,
           "requirement": lambda name: f"@pip//{name}",
           "py_library": rule("py_library"), "py_binary": rule("py_binary"),
           "py_test": rule("py_test")}
  with open(os.path.join(ROOT, "BUILD")) as f:
    exec(compile(f.read(), "BUILD", "exec"), scope)  # pylint: disable=exec-used
  return targets


def files(pattern):
  return {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern))}


def test_every_source_file_belongs_to_a_target():
  targets = load_build()
  srcs = {s for t in targets.values() for s in t.get("srcs", [])}
  for pattern in ("milenas_tf/*.py", "bin/*.py", "configs/*.py", "tests/*_test.py"):
    missing = files(pattern) - srcs
    assert not missing, f"files without a BUILD target: {sorted(missing)}"
  assert srcs <= files("*/*.py"), "BUILD lists files that do not exist"


def test_scripts_are_binaries_and_tests_are_tests():
  targets = load_build()
  for path in files("bin/*.py"):
    assert any(t["kind"] == "py_binary" and path in t["srcs"] for t in targets.values()), path
  for path in files("tests/*_test.py"):
    assert any(t["kind"] == "py_test" and path in t["srcs"] for t in targets.values()), path


def test_dependencies_and_data_exist():
  targets = load_build()
  for name, target in targets.items():
    for dep in target.get("deps", []) + target.get("data", []):
      if dep.startswith(":"):
        assert dep[1:] in targets, f"{name} depends on unknown target {dep}"
      elif dep.startswith("@pip//"):
        assert dep[len("@pip//"):] in PIP_PACKAGES, f"{name}: unknown package {dep}"
      else:
        assert os.path.exists(os.path.join(ROOT, dep)), f"{name}: missing file {dep}"


def test_library_data_is_package_data_in_setup():
  targets = load_build()
  with open(os.path.join(ROOT, "setup.py")) as f:
    setup = f.read()
  for data in targets["milenas_tf"]["data"]:
    assert re.search(re.escape(os.path.basename(data)), setup), data
