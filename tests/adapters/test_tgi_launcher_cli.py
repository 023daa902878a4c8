"""`text-generation-router` (ecosched_adapters.tgi.launcher_cli): TGI's launcher's argument list maps
to RouterOptions, unknown arguments are named, ecosched's settings fall back to the environment, and
the real program serves a stand-in shard end to end (one subprocess test, a few seconds)."""

from __future__ import annotations

import pytest

pytest.importorskip("aiohttp", reason="the TGI router needs aiohttp: pip install -e '.[tgi]'")
pytest.importorskip("grpc", reason="the TGI router needs grpcio: pip install -e '.[tgi]'")

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ecosched_adapters.settings import CHECK_LEDGER_ENV, STATS_ENV
from ecosched_adapters.tgi import app, launcher_cli
from ecosched_adapters.tgi.app import RouterOptions
from ecosched_adapters.tgi.tokenizer import builtin_tokenizer

# Every flag `spawn_webserver` (TGI launcher/src/main.rs:1831-1975, v3.3.7) can pass, and its value
# type: `usize`/`u32` numbers, strings, or a switch.
LAUNCHER_VALUE_FLAGS = (
    "--max-client-batch-size", "--max-concurrent-requests", "--max-best-of", "--max-stop-sequences",
    "--max-top-n-tokens", "--max-batch-prefill-tokens", "--waiting-served-ratio", "--max-waiting-tokens",
    "--validation-workers", "--hostname", "--port", "--prometheus-port", "--master-shard-uds-path",
    "--tokenizer-name", "--payload-limit", "--max-input-tokens", "--max-total-tokens", "--usage-stats",
    "--tokenizer-config-path", "--max-batch-total-tokens", "--max-batch-size", "--revision",
    "--otlp-endpoint", "--otlp-service-name", "--cors-allow-origin", "--api-key", "--ngrok-authtoken",
    "--ngrok-edge",
)  # fmt: skip
LAUNCHER_SWITCHES = ("--disable-grammar-support", "--trust-remote-code", "--json-output", "--ngrok")


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A model directory holding a tokenizer.json (the built-in tokenizer, saved)."""
    d = tmp_path / "model"
    d.mkdir()
    builtin_tokenizer().save(str(d / "tokenizer.json"))
    return d


def launcher_argv(model_id: str, **optional: Any) -> list[str]:
    """The router's argv as TGI's launcher builds it (`spawn_webserver`, in its order), with the
    launcher's defaults; `optional` holds the values of the flags it passes only when set."""
    argv = [
        "--max-client-batch-size", "4", "--max-concurrent-requests", "128", "--max-best-of", "2",
        "--max-stop-sequences", "4", "--max-top-n-tokens", "5", "--max-batch-prefill-tokens", "4096",
        "--waiting-served-ratio", "0.3", "--max-waiting-tokens", "20", "--validation-workers", "2",
        "--hostname", "0.0.0.0", "--port", "3000", "--prometheus-port", "9000",
        "--master-shard-uds-path", "/tmp/text-generation-server-0", "--tokenizer-name", model_id,
        "--payload-limit", "2000000",
    ]  # fmt: skip
    for flag in ("max_input_tokens", "max_total_tokens"):
        if flag in optional:
            argv += ["--" + flag.replace("_", "-"), str(optional[flag])]
    argv += ["--usage-stats", "on"]
    if optional.get("disable_grammar_support"):
        argv.append("--disable-grammar-support")
    for flag in ("tokenizer_config_path", "max_batch_total_tokens", "max_batch_size", "revision"):
        if flag in optional:
            argv += ["--" + flag.replace("_", "-"), str(optional[flag])]
    argv += [f for f in ("--trust-remote-code", "--json-output") if optional.get(f[2:].replace("-", "_"))]
    if "otlp_endpoint" in optional:
        argv += ["--otlp-endpoint", optional["otlp_endpoint"]]
    argv += ["--otlp-service-name", "text-generation-inference.router"]
    for origin in optional.get("cors_allow_origin", []):
        argv += ["--cors-allow-origin", origin]
    if "api_key" in optional:
        argv += ["--api-key", optional["api_key"]]
    if optional.get("ngrok"):
        argv += ["--ngrok", "--ngrok-authtoken", "tok", "--ngrok-edge", "edge"]
    return argv


FULL = {
    "max_input_tokens": 1000, "max_total_tokens": 2000, "disable_grammar_support": True,
    "tokenizer_config_path": "/x/tokenizer_config.json", "max_batch_total_tokens": 64000, "max_batch_size": 32,
    "revision": "abc", "trust_remote_code": True, "json_output": True, "otlp_endpoint": "http://otel:4317",
    "cors_allow_origin": ["http://a", "http://b"], "ngrok": True,
}  # fmt: skip


def options(argv: list[str], env: dict[str, str] | None = None) -> RouterOptions:
    return launcher_cli.router_options(launcher_cli.parse_args(argv), env or {})


def test_the_helper_emits_every_flag_of_spawn_webserver(model_dir: Path) -> None:
    argv = launcher_argv(str(model_dir), **FULL, api_key="k")
    flags = {a for a in argv if a.startswith("--")}
    assert flags == set(LAUNCHER_VALUE_FLAGS) | set(LAUNCHER_SWITCHES)


def test_the_launchers_full_argument_list_maps_to_router_options(model_dir: Path) -> None:
    opts = options(launcher_argv(str(model_dir), **FULL))
    assert opts == RouterOptions(
        master_shard_uds_path="/tmp/text-generation-server-0", tokenizer_name=str(model_dir),
        model_id=str(model_dir), hostname="0.0.0.0", port=3000, prometheus_port=9000,
        max_concurrent_requests=128, max_best_of=2, max_stop_sequences=4, max_top_n_tokens=5,
        max_input_tokens=1000, max_total_tokens=2000, waiting_served_ratio=0.3, max_batch_prefill_tokens=4096,
        max_batch_total_tokens=64000, max_waiting_tokens=20, max_batch_size=32, max_client_batch_size=4,
        validation_workers=2, payload_limit=2_000_000, disable_grammar_support=True,
        tokenizer_config_path="/x/tokenizer_config.json",
    )  # fmt: skip
    differs, harmless = launcher_cli.ignored_arguments(launcher_cli.parse_args(launcher_argv(str(model_dir), **FULL)))
    named = [item.split(" ", 1)[0] for item in differs + harmless]
    assert sorted(named) == sorted([
        "--otlp-endpoint", "--cors-allow-origin", "--ngrok", "--ngrok-authtoken",
        "--ngrok-edge", "--revision", "--trust-remote-code", "--usage-stats",
    ])  # fmt: skip


def test_the_minimal_launcher_list_and_the_bare_command(model_dir: Path) -> None:
    opts = options(launcher_argv(str(model_dir)))
    assert opts.max_input_tokens is None and opts.max_batch_size is None and not opts.disable_grammar_support
    differs, harmless = launcher_cli.ignored_arguments(launcher_cli.parse_args(launcher_argv(str(model_dir))))
    assert differs == [] and harmless == ["--usage-stats (ecosched sends no usage statistics)"]
    bare = options([])
    assert bare == RouterOptions()  # TGI's defaults, 127.0.0.1, the built-in tokenizer


def test_equals_form_and_the_legacy_max_input_length() -> None:
    assert options(["--port=3001", "--max-input-length", "500"]).max_input_tokens == 500
    assert options(["--max-input-length", "500", "--max-input-tokens", "500"]).max_input_tokens == 500
    with pytest.raises(launcher_cli.UsageError, match=r"both --max-input-tokens \(600\) and --max-input-length"):
        options(["--max-input-length", "500", "--max-input-tokens", "600"])


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--foo", "3"], "unknown argument --foo ("),
        (["--port", "3000", "--foo=3"], "unknown argument --foo ("),
        (["--max-batch", "3"], "unknown argument --max-batch ("),  # no abbreviations, as in clap
        (["print-schema"], "unknown value print-schema ("),
        (["--max-batch-size", "-1"], "argument --max-batch-size: must be a whole number >= 0, got '-1'"),
        (["--usage-stats", "maybe"], "argument --usage-stats: invalid choice: 'maybe'"),
        (["--port", "70000"], "must be a port number"),
        (["--max-batch-size", "0"], "`max_batch_size` must be > 0"),
        (["--ecosched-policy", "nope"], "unknown policy 'nope'; known: "),
        (["--ecosched-set", "nope.field=1"], "error: "),
    ],
)
def test_refusals_name_what_is_wrong_and_exit_2(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app, "run", _must_not_run)
    assert launcher_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("text-generation-router: ") and named in err
    if "unknown argument" in err:
        assert "ecosched's router accepts TGI's launcher arguments; see --help" in err


def _must_not_run(opts: RouterOptions) -> int:
    raise AssertionError("the router must not start")


def test_the_environment_chooses_ecoscheds_settings_and_flags_win(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("policy: sarathi\n")
    env = {"ECOSCHED_POLICY": "sjf", "ECOSCHED_CONFIG": str(config), STATS_ENV: "/tmp/s.bin", CHECK_LEDGER_ENV: "1"}
    opts = options([], env)
    assert (opts.policy, opts.config_path, opts.stats_path) == ("sjf", str(config), "/tmp/s.bin")
    assert opts.check_ledger
    opts = options(["--ecosched-policy", "tgi-fifo", "--ecosched-config", "other.yaml", "--ecosched-set", "a=1",
                    "--ecosched-set", "b=2", "--ecosched-stats", "x.bin"], {**env, CHECK_LEDGER_ENV: "0"})
    assert (opts.policy, opts.config_path, opts.stats_path) == ("tgi-fifo", "other.yaml", "x.bin")
    assert opts.config_overrides == ("a=1", "b=2") and not opts.check_ledger
    assert options(["--ecosched-set", "policy=sarathi"], env).policy is None  # the flag beats the variable
    # the config file's policy applies when neither flag nor variable names one
    assert launcher_cli.check_ecosched_settings(options([], {"ECOSCHED_CONFIG": str(config)})) == "sarathi"


def test_the_tokenizer_is_a_local_file_a_directory_or_a_cached_hub_id(model_dir: Path, tmp_path: Path) -> None:
    env = {"HUGGINGFACE_HUB_CACHE": str(tmp_path / "hub")}
    assert options(["--tokenizer-name", str(model_dir / "tokenizer.json")], env).tokenizer_name == str(
        model_dir / "tokenizer.json"
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(launcher_cli.UsageError, match=r"--tokenizer-name .*empty: the directory has no tokenizer"):
        options(["--tokenizer-name", str(tmp_path / "empty")], env)
    missing = r"--tokenizer-name org/model: .*looked in .*hub.*never downloads"
    with pytest.raises(launcher_cli.UsageError, match=missing):
        options(["--tokenizer-name", "org/model"], env)
    repo = tmp_path / "hub" / "models--org--model"
    for commit in ("c0ffee", "beef"):
        (repo / "snapshots" / commit).mkdir(parents=True)
        shutil.copy(model_dir / "tokenizer.json", repo / "snapshots" / commit / "tokenizer.json")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c0ffee")
    opts = options(["--tokenizer-name", "org/model"], env)
    assert opts.tokenizer_name == str(repo / "snapshots" / "c0ffee") and opts.model_id == "org/model"
    assert options(["--tokenizer-name", "org/model", "--revision", "beef"], env).tokenizer_name.endswith("beef")


def test_help_explains_the_drop_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        launcher_cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for text in ("text-generation-router", "first on PATH", "text-generation-launcher", "ECOSCHED_POLICY=",
                 "ECOSCHED_CONFIG=", "tgi-fifo", "Authorization: Bearer", "never", "downloaded"):
        assert text in out, text
    for flag in (*LAUNCHER_VALUE_FLAGS, *LAUNCHER_SWITCHES, "--max-input-length", "--ecosched-set"):
        assert flag in out, flag


def test_main_runs_the_router_with_the_options_and_logs_ignored_flags_once(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[RouterOptions] = []
    monkeypatch.setattr(app, "run", lambda opts: seen.append(opts) or 0)
    monkeypatch.setenv("ECOSCHED_POLICY", "tgi-fifo")
    caplog.set_level(logging.INFO, logger=launcher_cli.__name__)
    assert launcher_cli.main(launcher_argv(str(model_dir), otlp_endpoint="http://otel:4317")) == 0
    assert len(seen) == 1 and seen[0].policy == "tgi-fifo" and seen[0].waiting_served_ratio == 0.3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["ignored, not implemented by ecosched's router: --otlp-endpoint (no OpenTelemetry export)"]


def test_json_output_has_tgis_fields() -> None:
    record = logging.LogRecord("ecosched.x", logging.WARNING, "/a.py", 7, "hello %s", ("you",), None)
    line = json.loads(launcher_cli.JsonFormatter().format(record))
    assert line["level"] == "WARN" and line["message"] == "hello you" and line["target"] == "ecosched.x"
    assert line["line_number"] == 7 and line["timestamp"].endswith("Z")


# -- end to end: the program itself, against a stand-in shard ------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(predicate: Any, what: str, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc.poll() is not None:
            output = proc.stdout.read() if proc.stdout else b""
            raise AssertionError(f"{what}: the process exited with {proc.returncode}: {output!r}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: timed out")
        time.sleep(0.1)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@pytest.fixture
def standin_shard() -> Iterator[str]:
    """A stand-in shard (one rank, 64 blocks of 16 tokens) in its own process; yields rank 0's socket."""
    base = Path(tempfile.mkdtemp(prefix="es-tgi-", dir="/tmp"))  # short: unix socket paths are limited
    code = "import sys; from ecosched_adapters.tgi.standin import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--uds-path", str(base / "shard"), "--num-blocks", "64", "--block-size", "16"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _wait(lambda: (base / "shard-0").exists(), "stand-in shard", proc)
        yield str(base / "shard-0")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
        shutil.rmtree(base, ignore_errors=True)


def test_the_program_serves_a_standin_shard_and_stops_on_sigterm(standin_shard: str) -> None:
    port = _free_port()
    argv = [
        sys.executable, "-m", "ecosched_adapters.tgi.launcher_cli", "--master-shard-uds-path", standin_shard,
        "--hostname", "127.0.0.1", "--port", str(port), "--prometheus-port", str(port),
        "--max-batch-prefill-tokens", "512", "--usage-stats", "on", "--json-output",
    ]  # fmt: skip
    env = {**os.environ, "ECOSCHED_POLICY": "tgi-fifo"}
    router = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _healthy(url), "router /health", router)
        body = json.dumps({"inputs": "Hi[[eos:3]]", "parameters": {"max_new_tokens": 8, "details": True}})
        req = urllib.request.Request(url + "/generate", body.encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            out = json.loads(resp.read())
        assert out["details"]["finish_reason"] == "eos_token" and out["details"]["generated_tokens"] == 3
        with urllib.request.urlopen(url + "/info", timeout=5) as resp:
            assert json.loads(resp.read())["ecosched_policy"] == "tgi-fifo"
    finally:
        router.send_signal(signal.SIGTERM)
        stdout, stderr = router.communicate(timeout=20)
    assert router.returncode == 0, stderr
    lines = [json.loads(line) for line in stdout.decode().splitlines()]  # logs on stdout, as JSON
    assert any("--usage-stats" in line["message"] for line in lines)
    assert stderr == b""


def test_api_key_reaches_the_router_options(model_dir: Path) -> None:
    assert options(launcher_argv(str(model_dir), api_key="s3cret")).api_key == "s3cret"
    assert options(launcher_argv(str(model_dir))).api_key is None


def test_the_chat_template_comes_from_tokenizer_config(tmp_path: Path) -> None:
    from ecosched_adapters.tgi.app import chat_template

    assert chat_template(None, None) == {} and chat_template(str(tmp_path), None) == {}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}",
        "bos_token": {"content": "<s>"}, "eos_token": "</s>",
    }))  # fmt: skip
    assert chat_template(str(tmp_path), None) == {
        "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}", "bos_token": "<s>", "eos_token": "</s>",
    }  # fmt: skip
    named = tmp_path / "named.json"
    templates = [{"name": "default", "template": "X"}, {"name": "t", "template": "Y"}]
    named.write_text(json.dumps({"chat_template": templates}))
    assert chat_template(None, str(named)) == {"chat_template": "X"}
    with pytest.raises(FileNotFoundError):
        chat_template(None, str(tmp_path / "missing.json"))
