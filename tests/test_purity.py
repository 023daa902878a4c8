"""The core and the policies stay pure: no engine, accelerator, network or clock imports, no ecosched
modules outside their layer, and no hidden randomness. Checked statically (ast) and at runtime."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import ecosched

PACKAGE_ROOT = Path(ecosched.__file__).resolve().parent
CORE = PACKAGE_ROOT / "core"
POLICIES = PACKAGE_ROOT / "policies"

FORBIDDEN = {
    "torch", "vllm", "sglang", "onnxruntime", "aiohttp", "requests", "httpx", "grpc", "numpy", "ray",
    "fastapi", "asyncio", "time", "threading", "socket", "text_generation",
}  # fmt: skip
# Clocks other than `time`: the core is deterministic, time comes in as arguments.
CLOCKS = {"datetime"}
ALLOWED_ECOSCHED = {
    "core": ("ecosched.core", "ecosched.config", "ecosched.errors"),
    "policies": ("ecosched.core", "ecosched.config", "ecosched.errors", "ecosched.registry", "ecosched.policies"),
}
RANDOM_IMPORT_ALLOWED = {"core/predictor.py"}
HEAVY_AT_RUNTIME = ("torch", "vllm", "sglang", "onnxruntime", "aiohttp", "numpy")


@dataclass(frozen=True)
class Import:
    module: str  # absolute dotted name
    line: int


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def collect_imports(source: str, modname: str, is_package: bool = False) -> list[Import]:
    """Every module imported anywhere in `source` (top level, functions, TYPE_CHECKING blocks);
    relative imports are resolved against `modname`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [Import(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = modname.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base)
                target = f"{prefix}.{node.module}" if node.module else prefix
            else:
                target = node.module or ""
            found.append(Import(target, node.lineno))
            # `from ecosched import core` imports ecosched.core; `from x import y` may import a submodule.
            found += [Import(f"{target}.{alias.name}", node.lineno) for alias in node.names if alias.name != "*"]
    return found


def modules(root: Path) -> list[Path]:
    paths = sorted(root.rglob("*.py"))
    assert paths, f"no modules found under {root}"
    return paths


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def import_violations(source: str, modname: str, layer: str, is_package: bool = False) -> list[str]:
    """Imports of forbidden modules, or of ecosched modules outside `layer`'s allowed prefixes."""
    problems = []
    for imp in collect_imports(source, modname, is_package):
        top = imp.module.split(".")[0]
        if top in FORBIDDEN:
            problems.append(f"{modname}:{imp.line} imports {imp.module}")
        elif top == "ecosched" and not within(imp.module, ALLOWED_ECOSCHED[layer]):
            # `from ecosched.core.request import Request` also yields `ecosched.core.request.Request`,
            # which is within the allowed prefix; only names outside the layer are reported.
            problems.append(f"{modname}:{imp.line} imports {imp.module} (outside the {layer} layer)")
    return problems


def violations(path: Path, layer: str) -> list[str]:
    return import_violations(path.read_text(), module_name(path), layer, path.name == "__init__.py")


def determinism_violations(source: str, rel: str) -> list[str]:
    """No clocks, no module-level random functions; `random` only as the type of an injected generator.
    `rel` is the path relative to the package (`core/predictor.py`)."""
    tree = ast.parse(source)
    problems = []
    random_names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top in CLOCKS:
                    problems.append(f"{rel}:{node.lineno} imports the clock module {alias.name}")
                if alias.name == "random":
                    if rel not in RANDOM_IMPORT_ALLOWED:
                        problems.append(f"{rel}:{node.lineno} imports random")
                    random_names.add(alias.asname or "random")
        elif isinstance(node, ast.ImportFrom) and node.module:
            top = node.module.split(".")[0]
            if top in CLOCKS:
                problems.append(f"{rel}:{node.lineno} imports from the clock module {node.module}")
            if top == "random":
                problems.append(f"{rel}:{node.lineno} imports names from random: use an injected random.Random")
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in random_names:
            if id(node) in called:
                problems.append(f"{rel}:{node.lineno} calls {node.value.id}.{node.attr}()")
            elif node.attr != "Random":
                problems.append(f"{rel}:{node.lineno} uses {node.value.id}.{node.attr}")
    return problems


# ---- the checker itself (so the purity tests cannot pass vacuously) ----


def test_collector_finds_imports_of_every_form() -> None:
    source = (
        "import os, torch.nn as nn\n"
        "from typing import TYPE_CHECKING\n"
        "from ecosched.core.request import Request\n"
        "from . import ledger\n"
        "from ..factory import build_scheduler\n"
        "if TYPE_CHECKING:\n"
        "    from ecosched.cli import main\n"
        "def f():\n"
        "    import time\n"
    )
    names = {i.module for i in collect_imports(source, "ecosched.core.scheduler")}
    assert {
        "os",
        "torch.nn",
        "ecosched.core.request",
        "ecosched.core",
        "ecosched.core.ledger",
        "ecosched.factory",
        "ecosched.factory.build_scheduler",
        "ecosched.cli",
        "time",
    } <= names


def test_checker_flags_forbidden_imports() -> None:
    source = (
        "import numpy\n"
        "from ecosched.factory import build_scheduler\n"
        "from ecosched.core.ledger import BlockLedger\n"
        "from ecosched.sim import engine\n"
    )
    core = import_violations(source, "ecosched.core.probe", "core")
    assert any("imports numpy" in p for p in core)
    assert any("imports ecosched.factory " in p for p in core)
    assert any("imports ecosched.sim.engine " in p for p in core)
    assert not any("ledger" in p for p in core)
    # The policies layer may use the registry; the core may not.
    assert import_violations("from ecosched.registry import Registry\n", "ecosched.policies.x", "policies") == []
    assert import_violations("from ecosched.registry import Registry\n", "ecosched.core.x", "core") != []
    assert import_violations("from ..policies import POLICIES\n", "ecosched.core.x", "core") != []


def test_determinism_checker_flags_random_calls() -> None:
    typed = "import random\ndef f(rng: random.Random) -> float:\n    return rng.random()\n"
    assert determinism_violations(typed, "core/predictor.py") == []
    assert determinism_violations(typed, "core/step.py") == ["core/step.py:1 imports random"]
    gauss = "import random\ndef f() -> float:\n    return random.gauss(0, 1)\n"
    assert determinism_violations(gauss, "core/predictor.py") == ["core/predictor.py:3 calls random.gauss()"]
    aliased = "import random as r\nRNG = r.Random(0)\n"
    assert determinism_violations(aliased, "core/predictor.py") == ["core/predictor.py:2 calls r.Random()"]
    other = "from datetime import datetime\nfrom random import choice\nimport datetime as dt\n"
    assert len(determinism_violations(other, "core/step.py")) == 3


# ---- the package ----


def test_core_and_policies_modules_exist() -> None:
    core = {p.name for p in modules(CORE)}
    assert {"scheduler.py", "ledger.py", "predictor.py", "step.py"} <= core
    assert {"ecoserve.py", "vllm.py", "registry.py"} <= {p.name for p in modules(POLICIES)}


@pytest.mark.parametrize("path", modules(CORE), ids=lambda p: f"core/{p.name}")
def test_core_imports_are_pure(path: Path) -> None:
    assert violations(path, "core") == []


@pytest.mark.parametrize("path", modules(POLICIES), ids=lambda p: f"policies/{p.name}")
def test_policies_imports_are_pure(path: Path) -> None:
    assert violations(path, "policies") == []


@pytest.mark.parametrize("path", modules(CORE) + modules(POLICIES), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_clock_and_no_hidden_randomness(path: Path) -> None:
    assert determinism_violations(path.read_text(), path.relative_to(PACKAGE_ROOT).as_posix()) == []


def test_scheduler_sees_its_own_imports() -> None:
    # A sanity check on real code: the collector sees what the scheduler imports.
    path = CORE / "scheduler.py"
    names = {i.module for i in collect_imports(path.read_text(), module_name(path))}
    assert {"ecosched.core.ledger", "ecosched.config", "ecosched.errors", "logging"} <= names


def test_import_ecosched_loads_no_heavy_dependency() -> None:
    code = (
        "import json, sys\n"
        "import ecosched\n"
        "import ecosched.cli\n"
        f"print(json.dumps(sorted(m for m in {HEAVY_AT_RUNTIME!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout) == []


def test_import_core_loads_no_heavy_dependency() -> None:
    code = (
        "import json, sys\n"
        "import ecosched.core.scheduler\n"
        f"print(json.dumps(sorted(m for m in {(*HEAVY_AT_RUNTIME, 'asyncio')!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout) == []
