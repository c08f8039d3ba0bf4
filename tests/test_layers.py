"""The layering rule, read from the code's own imports (ast: nothing is imported or run).

Every import counts: module level, inside functions, under `if TYPE_CHECKING:` and in
try/except alike, since each is a dependency someone must keep in mind. Checked over
farm/, actors/ and jobs/ (not tests/):

1. nothing in farm/ but the entry points imports `ray` or `actors`;
2. no two modules import each other, directly or round a longer loop;
3. imports point downward through LAYERS (a module may import its own layer or lower).
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TREES = ("farm", "actors", "jobs")

# Bottom first. A module belongs to the longest entry that names it or a package above it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("farm", "farm.errors", "farm.settings"),  # the package root holds only __version__; settings: the caps
    ("farm.records",),  # shared records; comfy_errors spells ComfyUI's error JSON
    ("farm.sampling",),
    ("farm.text",),  # CLIP text encoding (imports sampling's tensor helpers)
    ("farm.models",),
    ("farm.nodes",),
    ("farm.workflow",),
    ("farm.engine",),
    ("farm.scheduler",),
    ("farm.worker",),
    ("farm.service", "farm.futures"),  # futures: what the Python API hands back
    ("farm.server",),
    ("actors",),
    ("farm.cli", "farm.client", "farm.__main__", "jobs"),  # entry points
)
# "farm" as a layer entry is farm/__init__.py alone, not every module under it.
EXACT_ONLY = frozenset({"farm"})
# The only modules of farm/ that may import ray or the actors package.
RAY_SIDE = frozenset({"farm.cli", "farm.client", "farm.__main__"})


@dataclass(frozen=True)
class Import:
    source: str  # importing module, e.g. "farm.server.app"
    path: Path  # its file, relative to the root
    line: int
    target: str  # the imported module as written, resolved if relative ("ray.exceptions")
    local: str | None  # the tree's module it loads ("farm.server.deps"), None for a third-party one


def find_modules(root: Path) -> dict[str, Path]:
    modules = {}
    for tree in TREES:
        for path in sorted((root / tree).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _imports_of(name: str, path: Path, root: Path, modules: dict[str, Path]) -> list[Import]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    rel = path.relative_to(root)

    def local(target: str) -> str | None:
        while target:
            if target in modules:
                return target
            target = target.rpartition(".")[0]
        return None

    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [Import(name, rel, node.lineno, a.name, local(a.name)) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                submodule = f"{module}.{alias.name}"  # `from pkg import mod` loads pkg.mod
                target = submodule if submodule in modules else module
                found.append(Import(name, rel, node.lineno, target, local(target)))
    return found


def collect_imports(root: Path = ROOT) -> list[Import]:
    modules = find_modules(root)
    return [imp for name, path in modules.items() for imp in _imports_of(name, path, root, modules)]


def layer_of(module: str) -> int | None:
    best, best_len = None, -1
    for index, entries in enumerate(LAYERS):
        for entry in entries:
            matches = module == entry or (entry not in EXACT_ONLY and module.startswith(entry + "."))
            if matches and len(entry) > best_len:
                best, best_len = index, len(entry)
    return best


def ray_violations(imports: list[Import]) -> list[str]:
    return [f"{i.path}:{i.line}: {i.source} imports {i.target}" for i in imports
            if i.source.split(".")[0] == "farm" and i.source not in RAY_SIDE
            and i.target.split(".")[0] in ("ray", "actors")]


def upward_violations(imports: list[Import], modules) -> list[str]:
    problems = [f"{m} is in no layer; add it to LAYERS in tests/test_layers.py"
                for m in modules if layer_of(m) is None]
    for i in imports:
        if i.local is None:
            continue
        low, high = layer_of(i.local), layer_of(i.source)
        if low is not None and high is not None and low > high:
            problems.append(f"{i.path}:{i.line}: {i.source} (layer {', '.join(LAYERS[high])}) imports "
                            f"{i.local} from the higher layer {', '.join(LAYERS[low])}")
    return problems


def import_cycles(imports: list[Import]) -> list[list[str]]:
    """Every strongly connected set of two modules or more (Tarjan, iterative), each as one
    loop through it, e.g. [a, b, c, a]."""
    graph: dict[str, set[str]] = {}
    for i in imports:
        graph.setdefault(i.source, set())
        if i.local is not None and i.local != i.source:
            graph[i.source].add(i.local)
            graph.setdefault(i.local, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(set(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return [_loop(sorted(c)[0], c, graph) for c in components]


def _loop(start: str, component: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest loop from start back to itself inside the component."""
    previous: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & component):
                if child == start:
                    path = [node]
                    while previous[path[-1]] is not None:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    return [start]


def _where(cycle: list[str], imports: list[Import]) -> str:
    steps = []
    for a, b in zip(cycle, cycle[1:]):
        first = next(i for i in imports if i.source == a and i.local == b)
        steps.append(f"{first.path}:{first.line} ({a} -> {b})")
    return " -> ".join(cycle) + "\n      " + "\n      ".join(steps)


@pytest.fixture(scope="module")
def tree() -> tuple[list[Import], dict[str, Path]]:
    return collect_imports(ROOT), find_modules(ROOT)


def test_library_imports_no_ray_or_actors(tree):
    imports, _ = tree
    assert not ray_violations(imports), "\n".join(["farm/ outside the entry points must not import ray or actors:",
                                                   *ray_violations(imports)])


def test_no_import_cycles(tree):
    imports, _ = tree
    cycles = import_cycles(imports)
    assert not cycles, "import cycles:\n" + "\n".join("  " + _where(c, imports) for c in cycles)


def test_imports_point_downward(tree):
    imports, modules = tree
    problems = upward_violations(imports, modules)
    assert not problems, "imports that point up (LAYERS in tests/test_layers.py):\n" + "\n".join(problems)


# -- the checker on a tree made for it: it must see what it is meant to see -------------

def _plant(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checker_finds_planted_faults(tmp_path):
    _plant(tmp_path, {
        "farm/__init__.py": "",
        "farm/errors.py": "def f():\n    from farm.server import app\n",  # upward, in a function
        "farm/server/__init__.py": "",
        "farm/server/app.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import ray\n"
                              "from .. import errors\n",
        "actors/__init__.py": "",
        "jobs/__init__.py": "",
    })
    imports = collect_imports(tmp_path)
    modules = find_modules(tmp_path)
    [upward] = upward_violations(imports, modules)
    assert upward.startswith("farm/errors.py:2: farm.errors") and "farm.server.app" in upward
    assert ray_violations(imports) == ["farm/server/app.py:3: farm.server.app imports ray"]
    assert import_cycles(imports) == [["farm.errors", "farm.server.app", "farm.errors"]]
