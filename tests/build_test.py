"""BUILD stays true to the tree: every file has a target, every dependency exists."""

import ast
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
  for pattern in ("milenas_tf/*.py", "milenas_tf/*/*.py", "bin/*.py", "configs/*.py",
                  "tests/*.py"):
    missing = files(pattern) - srcs
    assert not missing, f"files without a BUILD target: {sorted(missing)}"
  assert srcs <= files("*/*.py") | files("*/*/*.py"), "BUILD lists files that do not exist"


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


def _imported_subpackages(path):
  """The subpackages of milenas_tf that a file imports ("core", "search", ...)."""
  with open(os.path.join(ROOT, path)) as f:
    tree = ast.parse(f.read())
  return {node.module.split(".")[1] for node in ast.walk(tree)
          if isinstance(node, ast.ImportFrom) and node.module
          and node.module.startswith("milenas_tf.")}


def test_library_and_script_targets_depend_on_what_they_import():
  """A subpackage's target lists exactly the subpackages its modules import (and a
  script's, at least those it imports): BUILD states the import rules."""
  targets = load_build()
  for name, target in targets.items():
    if target["kind"] == "py_test" or name in ("milenas_tf", "package_init", "configs"):
      continue
    subpackage = name[:-len("_lib")] if name.endswith("_lib") else None
    imported = set().union(*(_imported_subpackages(s) for s in target["srcs"]))
    imported -= {subpackage}
    deps = {d[1:-len("_lib")] for d in target["deps"] if d.endswith("_lib")}
    if target["kind"] == "py_library":
      assert deps == imported, f"{name}: deps {sorted(deps)}, imports {sorted(imported)}"
    else:
      assert imported <= deps, f"{name}: imports {sorted(imported - deps)} undeclared"


def test_search_and_train_never_import_each_other():
  for role, other in (("search", "train"), ("train", "search")):
    for path in files(f"milenas_tf/{role}/*.py"):
      assert other not in _imported_subpackages(path), path
  for path in files("milenas_tf/*/*.py") - files("milenas_tf/benchmarks/*.py"):
    assert "benchmarks" not in _imported_subpackages(path), path


def test_library_data_is_package_data_in_setup():
  targets = load_build()
  with open(os.path.join(ROOT, "setup.py")) as f:
    setup = f.read()
  for data in targets["space_lib"]["data"]:
    assert re.search(re.escape(os.path.basename(data)), setup), data
