"""The layers point one way: an import-linter contract (pyproject.toml) checked in CI, shown to
fail on a deliberate back-import, and no import cycle between files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["digits", "model_store", "worker", "scheduler", "migrations"]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(root), "PATH": ""},
    )


def test_the_layer_contract_is_kept() -> None:
    """lint-imports also follows imports inside functions: the contract covers them all."""
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "back_import", "broken"),
    [
        ("digits/core/settings.py", "import digits.cli", "digits.core.settings -> digits.cli"),
        ("worker/chunks.py", "import scheduler.batches", "worker.chunks -> scheduler.batches"),
        ("model_store/registry.py", "import worker.chunks", "model_store.registry -> worker"),
        ("worker/chunks.py", "import digits.app.runner", "worker.chunks -> digits.app.runner"),
    ],
)
def test_a_back_import_breaks_the_contract(
    module: str, back_import: str, broken: str, tmp_path: Path
) -> None:
    """The contract is not vacuous: one lower layer importing a higher one fails it."""
    for name in [*PACKAGES, "pyproject.toml"]:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(
                source,
                tmp_path / name,
                ignore=shutil.ignore_patterns("__pycache__", "*.keras", "*.csv.gz"),
            )
        else:
            shutil.copy(source, tmp_path / name)
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{back_import}  # deliberate back-import\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and broken in result.stdout, result.stdout[-3000:]


LAYER_PACKAGES = ("digits.cli", "digits.app", "digits.core")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _layer(module: str) -> str:
    return next((p for p in LAYER_PACKAGES if module.startswith(p)), module.split(".")[0])


def import_graph() -> tuple[dict[str, set[str]], dict[tuple[str, str], int]]:
    """module -> project modules it imports (anywhere in the file, functions included), and
    layer -> layer statement counts."""
    import ast

    modules = _modules()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    counts: dict[tuple[str, str], int] = {}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            targets = {n for n in names if n in modules and n != module}
            edges[module] |= targets
            for pair in {(_layer(module), _layer(t)) for t in targets}:
                if pair[0] != pair[1]:
                    counts[pair] = counts.get(pair, 0) + 1
    return edges, counts


def test_no_import_cycle_between_files() -> None:
    """The layer contract says nothing about files inside one package: no cycle there either
    (imports inside functions count). Prints the package graph (``-s``), as in
    docs/architecture.md."""
    edges, counts = import_graph()
    for (a, b), n in sorted(counts.items()):
        print(f"{a:>12} -> {b:<12} {n}")
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(component)

    for module in edges:
        if module not in index:
            visit(module)
    assert cycles == []
    layers = {(a, b) for a, b in counts}
    assert not {(a, b) for a, b in layers if (b, a) in layers}, "a cycle between layers"


# Where a project import may sit inside a function, and why: the CLI imports its library only in
# the command that needs it, so `--help`, `status`, `results` and `export` never load TensorFlow,
# Celery or pandas (tests/digits/cli/test_cli.py times them); `model_store.architectures` builds
# Keras layers at import, so only the code that builds a network imports it. Everywhere else an
# import at module top shows the dependency to readers and to import-linter's graph.
LAZY_IMPORTS_ALLOWED = {
    "digits.cli": "start-up: the fast commands stay fast",
    "model_store.architectures": "imports TensorFlow and Keras at module top",
}


def function_level_imports() -> list[tuple[str, int, str]]:
    """(module, line, imported project module) for every project import inside a function."""
    import ast

    project = tuple(p for p in PACKAGES if p != "migrations")
    found = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for sub in ast.walk(node):
                names: list[str] = []
                if isinstance(sub, ast.Import):
                    names = [a.name for a in sub.names]
                elif isinstance(sub, ast.ImportFrom) and sub.module and not sub.level:
                    names = [sub.module]
                found += [(module, sub.lineno, n) for n in names if n.split(".")[0] in project]
    return sorted(set(found))


def _allowed(importer: str, imported: str) -> bool:
    return any(importer.startswith(k) or imported == k for k in LAZY_IMPORTS_ALLOWED)


def test_project_imports_sit_at_module_top_unless_start_up_needs_them() -> None:
    """A function-level import hides a dependency; only the listed start-up reasons excuse one."""
    hidden = [f"{m}:{line} imports {n}" for m, line, n in function_level_imports()]
    assert len(hidden) > 0  # the CLI's are there: the check below is not vacuous
    unexcused = [
        f"{m}:{line} imports {n}" for m, line, n in function_level_imports() if not _allowed(m, n)
    ]
    assert unexcused == [], "\n".join(unexcused)


@pytest.mark.parametrize(
    ("importer", "imported", "allowed"),
    [
        ("digits.cli.outputs", "digits.core.queries", True),
        ("model_store.fit", "model_store.architectures", True),
        ("worker.chunks", "model_store.inference", False),
        ("scheduler.service", "worker.celery_app", False),
    ],
)
def test_the_lazy_import_rule_tells_excused_from_unexcused(
    importer: str, imported: str, allowed: bool
) -> None:
    assert _allowed(importer, imported) is allowed
