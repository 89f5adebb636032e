"""The shape of the house, checked: dependencies run one way, scripts use public names, functions stay short, the
executor stays a thin adapter, and a site option needs no edit of the executor."""

from __future__ import annotations

import ast
import inspect
from dataclasses import fields
from pathlib import Path

import oncofl
from oncofl.executor import OncoFLExecutor
from oncofl.jobs.builder import ALGORITHM_OPTIONS
from oncofl.site.settings import TrainSettings

PACKAGE = Path(oncofl.__file__).resolve().parent
ROOT = PACKAGE.parents[1]
SERVER_SIDE = ("oncofl.server", "oncofl.aggregation")
SITE_SIDE = ("oncofl.executor", "oncofl.site", "oncofl.engine", "oncofl.distributed", "oncofl.data", "oncofl.tasks")
MAX_FUNCTION_LINES = 60


def _module_file(name: str) -> Path | None:
    rel = Path(*name.split(".")[1:])
    if not rel.parts:
        return PACKAGE / "__init__.py"
    for candidate in (PACKAGE / rel.with_suffix(".py"), PACKAGE / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(name: str) -> set[str]:
    """The oncofl modules ``name`` imports at module level or inside functions (relative imports resolved)."""
    path = _module_file(name)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.startswith("oncofl"):
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names if _module_file(f"{base}.{a.name}"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("oncofl"))
    return found


def _closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name in seen or _module_file(name) is None:
            continue
        seen.add(name)
        todo.extend(_imports(name))
    return seen


def test_the_server_side_imports_nothing_from_the_site_side():
    for module in SERVER_SIDE:
        reached = _closure(module)
        assert module in reached
        site = sorted(m for m in reached if m.startswith(SITE_SIDE))
        assert site == [], f"{module} reaches site-side modules {site}"
    # and the check sees imports at all: the executor does reach the site runtime
    assert "oncofl.site.runtime" in _closure("oncofl.executor")


def test_scripts_use_the_package_public_names_only():
    private = []
    for path in sorted((ROOT / "scripts").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("oncofl"):
                private += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert private == []


def test_no_function_in_the_package_is_longer_than_a_screen():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.name} {lines} lines")
    assert long == []


def test_the_executor_is_a_thin_adapter_whose_arguments_are_the_settings():
    source = inspect.getsource(inspect.getmodule(OncoFLExecutor))
    assert len(source.splitlines()) < 220
    # no algorithm is named in the executor or the trainer's loop: they live in oncofl.site.hooks
    for word in ("fedprox", "scaffold", "fedbn", "privacy.step"):
        assert word not in source.lower().replace("scaffold's", ""), word
    from oncofl.engine import Trainer

    loop = inspect.getsource(Trainer.train) + inspect.getsource(Trainer._epochs)
    for word in ("proximal", "scaffold", "privacy", "fedbn", "reset_optimizer"):
        assert word not in loop.lower(), word
    # every training setting is an executor argument (FLARE reads them from the signature), and every job option of
    # the same name reaches it
    params = inspect.signature(OncoFLExecutor.__init__).parameters
    assert {f.name for f in fields(TrainSettings)} <= set(params)
    assert {"algorithm", "fedprox_mu", "lr_schedule", "optimizer_state", "weight_decay"} <= set(ALGORITHM_OPTIONS)


def _documented_parameters(doc: str) -> set[str]:
    """The names an ``Args:`` section documents, Google style: one ``name: ...`` (or ``name (type): ...``) line each."""
    names: set[str] = set()
    for section in doc.split("Args:")[1:]:
        lines = section.splitlines()[1:]
        indent = None
        for line in lines:
            if not line.strip():
                continue
            width = len(line) - len(line.lstrip())
            if indent is None:
                indent = width
            if width < indent:
                break  # the section ended: the next paragraph or section starts less indented
            head, colon, _ = line.strip().partition(":")
            name = head.split(" (")[0].strip("*`")
            if width == indent and colon and name.isidentifier():
                names.add(name)
    return names


def test_public_constructors_document_their_parameters():
    undocumented = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.ClassDef) or node.name.startswith("_"):
                continue
            init = next((m for m in node.body if isinstance(m, ast.FunctionDef) and m.name == "__init__"), None)
            if init is None:
                continue
            a = init.args
            params = [p.arg for p in (a.posonlyargs + a.args)[1:] + a.kwonlyargs]  # *args / **kwargs may be skipped
            if not params:
                continue
            doc = (ast.get_docstring(node) or "") + "\n" + (ast.get_docstring(init) or "")
            where = f"{path.relative_to(PACKAGE)}:{node.name}"
            if "Args:" not in doc:
                undocumented.append(f"{where}: no Args: section")
                continue
            missing = [p for p in params if p not in _documented_parameters(doc)]
            if missing:
                undocumented.append(f"{where}: Args: lacks {missing}")
    assert undocumented == []
