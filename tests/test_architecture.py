"""The package's shape: imports run one way through the layers, no module takes part in an
import cycle, every module imports on its own, and the documented layout is the tree."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "baselines", "flexmoe")
#: Bottom to top; a module belongs to the layer of its longest matching prefix and may import
#: only from its own layer or those below. The documentation's architecture page explains them.
LAYERS = (
    ("foundation", ("bench", "bench.resources", "bench.version", "bench.errors", "bench.threads",
                    "bench.machine", "bench.hparams")),
    ("data interface", ("bench.data.arrays", "bench.data.core", "bench.data.splits",
                        "bench.data.digest")),
    ("plug-in surface", ("bench.profiles", "bench.registry", "bench.model", "bench.blocks")),
    ("models", ("baselines", "flexmoe")),
    ("data", ("bench.data",)),
    ("identity", ("bench.identity",)),
    ("training", ("bench.training",)),
    ("results", ("bench.results",)),
    ("execution", ("bench.execution",)),
    ("rendering", ("bench.rendering",)),
    ("artefacts", ("bench.artefacts",)),
    ("cli", ("bench.cli",)),
)


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The package modules ``name`` imports anywhere in its body (functions and
    ``TYPE_CHECKING`` blocks included): ``from a.b import c`` is ``a.b.c`` when that is a
    module, else ``a.b``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES
                       else node.module for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in MODULES and t != name}
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> int:
    best, level = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), i
    assert level >= 0, f"{module} belongs to no layer; add it to LAYERS"
    return level


def test_every_import_points_down_the_layers():
    wrong = [f"{a} ({LAYERS[_layer(a)][0]}) imports {b} ({LAYERS[_layer(b)][0]})"
             for a, deps in GRAPH.items() for b in deps
             if _layer(b) > _layer(a)]
    assert not wrong, "imports against the layer order:\n" + "\n".join(sorted(wrong))


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a list of modules, first = last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle():
    found = _cycle(GRAPH)
    assert found is None, "import cycle: " + " → ".join(found)


def test_the_cycle_check_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_imports_alone():
    """Each module imported first, with no other module of the packages loaded before it, so
    an import that works only after another module was imported fails here."""
    script = (
        "import importlib, sys, traceback\n"
        f"names = {sorted(MODULES)!r}\n"
        "failed = []\n"
        "for name in names:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] in "
        f"{PACKAGES!r}]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        failed.append(name + ': ' + traceback.format_exc().splitlines()[-1])\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]


def _documented_layout() -> list[str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"## Package layout\n.*?```[a-z]*\n(.*?)```", text, re.S)
    assert block, "docs/architecture.md has no '## Package layout' code block"
    return [line.split()[0] for line in block.group(1).splitlines() if line.strip()]


def test_the_architecture_page_lists_the_tree():
    listed = _documented_layout()
    assert len(listed) == len(set(listed)), "a path is listed twice"
    missing_on_disk = [p for p in listed if not (ROOT / p).exists()]
    assert not missing_on_disk, f"listed in docs/architecture.md but absent: {missing_on_disk}"
    tree = {f"{p.relative_to(ROOT).parent.as_posix()}/" if p.name == "__init__.py"
            else p.relative_to(ROOT).as_posix()
            for package in PACKAGES for p in (ROOT / package).rglob("*.py")
            if package == "bench" or p == ROOT / package / "__init__.py"}
    unlisted = sorted(tree - set(listed) - {"bench/"})
    assert not unlisted, f"in the tree but not in docs/architecture.md: {unlisted}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("bench")))
def test_modules_stay_small(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= 400, f"{module} has {lines} lines: split it by idea"
