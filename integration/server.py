"""Start, wait for and stop one engine server process on 127.0.0.1 for the integration tests.

A server runs in its own process group (`start_new_session=True`) with stdout and stderr in a log
file, so that stopping it also stops the engine-core process vLLM spawns, and so that a failed start
can show the end of its log.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 180.0
STOP_GRACE_S = 30.0
LOG_TAIL_LINES = 60
HOST = "127.0.0.1"
# vLLM's CPU build needs a KV space (it sizes memory from NUMA node 0 otherwise, and fails).
ENGINE_ENV_DEFAULTS = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_TARGET_DEVICE": "cpu"}


class ServerStartError(RuntimeError):
    """The server exited or did not answer in time; the message ends with its log's last lines."""


@dataclass(slots=True)
class ServerHandle:
    """A running server: its base URL, the served model's name, its log and its process."""

    url: str
    model: str
    log_path: Path
    proc: subprocess.Popen[bytes]
    stats_path: Path | None = None  # the adapter's counters (`ecosched serve --stats`), when it writes them

    def stop(self, grace_s: float = STOP_GRACE_S) -> int:
        """Stop the whole process group: SIGINT, then SIGTERM, then SIGKILL; return the exit code."""
        return stop_process_group(self.proc, grace_s)

    def log_tail(self, num_lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.log_path, num_lines)


ServerFactory = Callable[..., AbstractContextManager[ServerHandle]]
"""`with factory(mode_args, engine_args[, extra_env]) as server:` (`vllm_server_factory`, `sglang_server_factory`)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@functools.cache
def ecosched_has_serve() -> bool:
    """Whether this interpreter's `ecosched` CLI offers the `serve` command."""
    result = subprocess.run([sys.executable, "-m", "ecosched.cli", "--help"], capture_output=True, text=True,
                            timeout=60, check=False)
    return result.returncode == 0 and any(line.split()[:1] == ["serve"] for line in result.stdout.splitlines())


def serve_command(model_dir: Path, port: int, args: Sequence[str], backend: str = "vllm") -> list[str]:
    """The `ecosched serve --backend BACKEND` command line for a model, a port and the mode's arguments."""
    return [sys.executable, "-m", "ecosched.cli", "serve", "--backend", backend, "--model", str(model_dir),
            "--port", str(port), *args]


def stock_vllm_command(model_dir: Path, port: int, engine_args: Sequence[str]) -> list[str]:
    """Stock vLLM's OpenAI server, which is what `ecosched serve --no-ecosched -- ENGINE_ARGS` runs."""
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--host", HOST, "--port", str(port), *engine_args]


def start_server(command: Sequence[str], port: int, log_path: Path, timeout_s: float = START_TIMEOUT_S,
                 extra_env: dict[str, str] | None = None) -> ServerHandle:
    """Run `command`, wait until GET /health and GET /v1/models answer, and return its handle.

    Raises `ServerStartError` (after stopping the process group) when it exits or times out.
    """
    env = {**ENGINE_ENV_DEFAULTS, **os.environ, **(extra_env or {})}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        log.write(f"$ {shlex.join(command)}\n".encode())
        log.flush()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    url = f"http://{HOST}:{port}"
    try:
        model = _wait_until_ready(proc, url, time.monotonic() + timeout_s)
    except ServerStartError as exc:
        stop_process_group(proc)
        raise ServerStartError(f"{exc}\n--- last {LOG_TAIL_LINES} lines of {log_path} ---\n"
                               f"{log_tail(log_path)}") from None
    except BaseException:
        stop_process_group(proc)
        raise
    return ServerHandle(url, model, log_path, proc)


def _wait_until_ready(proc: subprocess.Popen[bytes], url: str, deadline: float) -> str:
    """Poll /health, then /v1/models; return the first served model's id."""
    path = "/health"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerStartError(f"the server exited with code {proc.returncode} before it was ready")
        body = _get(url + path)
        if body is not None and path == "/health":
            path = "/v1/models"
            continue
        if body is not None:
            models = json.loads(body).get("data") or []
            if models:
                return str(models[0]["id"])
        time.sleep(0.5)
    raise ServerStartError(f"{url} did not answer GET {path} within the start timeout")


def _get(url: str) -> bytes | None:
    """The body of a 200 answer, or None while the server is not (yet) answering."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read() if response.status == 200 else None
    except (OSError, urllib.error.URLError):
        return None


def stop_process_group(proc: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> int:
    """Signal the process group of `proc` with SIGINT, then SIGTERM, then SIGKILL until it exits."""
    for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            continue
    _kill_leftovers(proc.pid)
    return proc.wait(10.0)


def _kill_leftovers(pgid: int) -> None:
    """The group leader may exit before its children (the engine core); those must not outlive it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def log_tail(log_path: Path, num_lines: int = LOG_TAIL_LINES) -> str:
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(log unreadable: {exc})"
    return "\n".join(lines[-num_lines:])
