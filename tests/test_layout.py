"""The repository explains itself: packages are layered (no module imports from a package above
it, no import cycles), the README's Layout block lists every module, and nothing points to files
outside the repository."""
import ast
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "kosmos_jax")
# Lower numbers are lower layers; a module may import only from its own layer or below.
LAYERS = {"paths": 0, "cli": 0, "native_stderr": 0, "models": 0, "data": 1, "checkpointing": 2, "convert": 3, "training": 4,
          "inference": 4, "evaluation": 5, "planning": 6}
ENTRY_LAYER = 6            # train, eval, infer, demo, plan, gin_utils and the gin aliases
GIN_ALIASES = ("kosmos_jax.trainer", "kosmos_jax.optimizers", "kosmos_jax.partitioning")


def _modules() -> dict[str, str]:
  """kosmos_jax module name -> file path."""
  out = {}
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
        if parts[-1] == "__init__":
          parts = parts[:-1]
        out[".".join(parts)] = path
  return out


MODULES = _modules()


def _imports(path: str) -> set[str]:
  """kosmos_jax modules imported by a file (any depth, lazy imports included)."""
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith("kosmos_jax")}
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kosmos_jax"):
      for alias in node.names:
        full = f"{node.module}.{alias.name}"
        found.add(full if full in MODULES else node.module)
  return found


def _layer(module: str) -> int:
  parts = module.split(".")
  return LAYERS.get(parts[1], ENTRY_LAYER) if len(parts) > 1 else ENTRY_LAYER


def test_no_module_imports_from_a_higher_layer():
  offences = [f"{m} (layer {_layer(m)}) imports {i} (layer {_layer(i)})"
              for m, path in MODULES.items() for i in _imports(path)
              if _layer(i) > _layer(m)]
  assert not offences, "\n".join(offences)


def test_the_aliases_are_only_for_gin():
  users = [m for m, path in MODULES.items() if set(GIN_ALIASES) & _imports(path)]
  assert not users


def test_no_import_cycles():
  graph = {m: {i for i in _imports(p) if i in MODULES and i != m} for m, p in MODULES.items()}
  # A package's __init__ importing its own submodules is not a cycle of logic.
  graph = {m: {i for i in deps if not m.startswith(i + ".")} for m, deps in graph.items()}
  state, cycles = {}, []

  def visit(node, stack):
    state[node] = "open"
    for dep in graph[node]:
      if state.get(dep) == "open":
        cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
      elif dep not in state:
        visit(dep, stack + [dep])
    state[node] = "done"
  for module in graph:
    if module not in state:
      visit(module, [module])
  assert not cycles, "\n".join(cycles)


def _readme_layout() -> str:
  text = open(os.path.join(ROOT, "README.md")).read()
  match = re.search(r"## Layout\n.*?```\n(.*?)```", text, re.S)
  assert match, "README.md has no ## Layout code block"
  return match.group(1)


def test_readme_layout_lists_every_module():
  layout = _readme_layout()
  missing = []
  for module, path in MODULES.items():
    if module == "kosmos_jax":
      continue
    rel = os.path.relpath(path, PACKAGE)
    name = os.path.basename(rel)
    if name == "__init__.py":
      name = os.path.basename(os.path.dirname(rel)) + "/"
    if not re.search(rf"(^|\s){re.escape(name)}(\s|$)", layout, re.M):
      missing.append(rel)
  assert not missing, f"README Layout misses: {missing}"


def test_nothing_refers_to_files_outside_the_repository():
  pattern = r"kosmos_spec\.md|env_notes\.md|framework_anchors\.md|scale_and_data_notes\.md|\.\./shared"
  out = subprocess.run(["git", "grep", "-n", "-I", "-E", pattern, "--", "kosmos_jax", "tests",
                        "benchmarks", "docs", "gin", "launch", "README.md", ":!tests/test_layout.py"],
                       cwd=ROOT, capture_output=True, text=True)
  if out.returncode not in (0, 1):
    pytest.skip("not a git checkout")
  assert out.stdout == ""
