"""Imports go one way: no cycle among the package's modules, counting imports anywhere in a module
(module level and inside functions), and none inside functions at all."""

import ast
import os

from absl.testing import absltest

PACKAGE = "alenn_jax"
ROOT = os.path.join(os.path.dirname(__file__), "..")


def package_modules() -> dict[str, str]:
  """Dotted module name -> file, for every module of the package."""
  out = {}
  for folder, _, files in os.walk(os.path.join(ROOT, PACKAGE)):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        out[dotted.removesuffix(".__init__")] = path
  return out


def imports_of(path: str, modules) -> list[tuple[str, bool]]:
  """(imported package module, inside a function?) for every import statement of a file."""
  tree = ast.parse(open(path).read())
  functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
  nested = {id(n) for f in functions for n in ast.walk(f) if n is not f}
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    else:
      continue
    for name in names:
      while name and name not in modules:
        name = name.rpartition(".")[0]
      if name:
        found.append((name, id(node) in nested))
  return found


def import_graph(modules) -> dict[str, set[str]]:
  graph = {m: set() for m in modules}
  for module, path in modules.items():
    for target, _ in imports_of(path, modules):
      # A module importing its own package's __init__ (or itself) is not an edge.
      if target != module and not module.startswith(target + "."):
        graph[module].add(target)
  return graph


def find_cycle(graph) -> list[str] | None:
  """One cycle of `graph` as a list of modules, or None (depth-first search, three colours)."""
  colour = dict.fromkeys(graph, 0)  # 0 unvisited, 1 on the current path, 2 finished.
  path = []

  def visit(node):
    colour[node] = 1
    path.append(node)
    for target in sorted(graph[node]):
      if colour[target] == 1:
        return [*path[path.index(target) :], target]
      if colour[target] == 0:
        cycle = visit(target)
        if cycle:
          return cycle
    path.pop()
    colour[node] = 2
    return None

  for node in sorted(graph):
    if colour[node] == 0:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def reachable(graph, start: str) -> set[str]:
  """Every module `start` imports, directly or through others."""
  seen, todo = set(), [start]
  while todo:
    for target in graph[todo.pop()]:
      if target not in seen:
        seen.add(target)
        todo.append(target)
  return seen


class ImportGraphTest(absltest.TestCase):
  def test_finds_a_cycle_through_three_modules(self):
    self.assertEqual(find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}), ["a", "b", "c", "a"])
    self.assertIsNone(find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}))

  def test_the_package_has_no_import_cycle(self):
    modules = package_modules()
    self.assertGreater(len(modules), 20)
    self.assertIsNone(find_cycle(import_graph(modules)))

  def test_leaf_modules_import_no_job(self):
    modules = package_modules()
    graph = import_graph(modules)
    jobs = {
      f"{PACKAGE}.{m}"
      for m in (
        "localization.localize",
        "classification.train_classifier",
        "classification.predict",
        "reporting.report_md",
        "pipeline",
        "train_inpainting",
      )
    }
    self.assertLessEqual(jobs, set(modules))
    leaves = (
      "le_maps",
      "predictions",
      "metrics",
      "stats",
      "masks",
      "checkpointing",
      "image_io",
      "foreground",
      "image_priors",
      "additions",
      "paper_values",
      "pipeline_fields",
      "config_checks",
      "data_splits",
      "input_pipeline",
      "training_loop",
      "localization.difference",
      "localization.map_settings",
      "reporting.lesion_scores",
      "reporting.figures",
      "reporting.tables",
      "classification.classifier_setup",
      "classification.inference",
    )
    for leaf in leaves:
      self.assertFalse(reachable(graph, f"{PACKAGE}.{leaf}") & jobs, leaf)

  def test_each_stage_folder_keeps_its_pure_part_apart_from_its_job(self):
    graph = import_graph(package_modules())
    # Prediction and the trainer share inference; neither the reports nor prediction need the
    # trainer, and the pure D needs nothing of the job that maps datasets with it.
    for module, never in (
      ("classification.predict", "classification.train_classifier"),
      ("classification.inference", "classification.train_classifier"),
      ("localization.difference", "localization.map_settings"),
      ("localization.map_settings", "localization.localize"),
      ("reporting.localization_report", "localization.localize"),
      ("reporting.tables", "classification.train_classifier"),
    ):
      self.assertNotIn(f"{PACKAGE}.{never}", reachable(graph, f"{PACKAGE}.{module}"), module)

  def test_package_imports_are_at_module_top(self):
    modules = package_modules()
    local = [
      f"{os.path.relpath(path, ROOT)} imports {target}"
      for path in modules.values()
      for target, inside in imports_of(path, modules)
      if inside
    ]
    self.assertEqual(local, [])


if __name__ == "__main__":
  absltest.main()
