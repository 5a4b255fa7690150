"""The package's shape: no import cycle between modules, the repository stands alone (no
reference to files outside it), and docs/method.md names a function that exists for each of
the paper's equations."""
import ast
import importlib
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

import mer_utils

PACKAGE = Path(mer_utils.__file__).resolve().parent
REPO = PACKAGE.parent


def module_names() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__main__.py":  # runs the command line when imported
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def imports_of(name: str, known: set[str]) -> set[str]:
    """The kit's modules ``name`` imports anywhere in its source (top level or inside functions)."""
    path = PACKAGE.parent / Path(*name.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                       for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def test_no_import_cycle_between_modules():
    known = set(module_names())
    graph = {name: imports_of(name, known) for name in known}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] + [node, nxt] if nxt in trail else [node, nxt]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for name in sorted(known):
        if name not in state:
            visit(name, [])


@pytest.mark.parametrize("order", ["sorted", "reversed", "shuffled"])
def test_every_module_imports_in_any_order(order):
    names = module_names()
    if order == "reversed":
        names = names[::-1]
    elif order == "shuffled":
        random.Random(7).shuffle(names)
    code = "import importlib\nfor name in %r:\n    importlib.import_module(name)\n" % names
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]


def repository_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=REPO)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    return [REPO / line for line in listed.stdout.splitlines() if (REPO / line).is_file()]


def test_the_repository_stands_alone():
    outside = re.compile(r"DESIGN\.md|\.\./shared|seed-paper")
    offenders = [str(p.relative_to(REPO)) for p in repository_files()
                 if p.suffix in (".py", ".md", ".ipynb", ".toml", ".yml", ".txt", "") and p.name != "test_structure.py"
                 and outside.search(p.read_text(encoding="utf-8", errors="replace"))]
    assert not offenders, f"files pointing outside the repository: {offenders}"
    machine = re.compile(r"(?<![\w.])/(?:tmp|work|root|home)\b")  # a developer's paths, in what users read
    offenders = [str(p.relative_to(REPO)) for p in repository_files()
                 if p.suffix in (".md", ".ipynb") and machine.search(p.read_text(encoding="utf-8", errors="replace"))]
    assert not offenders, f"documents naming paths of the machine they were written on: {offenders}"


def test_method_doc_names_an_existing_function_for_each_equation():
    text = (REPO / "docs" / "method.md").read_text(encoding="utf-8")
    for equation in ("eq. 1", "eq. 3", "eq. 5", "eq. 6", "eq. 8"):
        assert equation in text, equation
    cited = set(re.findall(r"`(mer_utils(?:\.[A-Za-z_][A-Za-z_0-9]*)+)`", text))
    assert len(cited) >= 15, cited
    for dotted in sorted(cited):
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
                break
            except ModuleNotFoundError:
                continue
        for attribute in parts[cut:]:
            assert hasattr(obj, attribute), f"docs/method.md cites {dotted}, which does not exist"
            obj = getattr(obj, attribute)
