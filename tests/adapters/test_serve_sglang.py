"""`ecosched serve --backend sglang`: the SGLang command line and environment it builds, and the
plugin's switch (inert unless asked, and only in SGLang's scheduler process). No SGLang needed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import ecosched_adapters.sglang as plugin
import pytest
from ecosched_adapters.sglang import version as sglang_version
from ecosched_adapters.version import EngineVersionError

from ecosched.serving import serve_cli


@pytest.fixture
def model(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text("{}")
    return tmp_path


@pytest.fixture(autouse=True)
def sglang_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sglang_version, "installed_version", lambda *names: sglang_version.SUPPORTED_SGLANG)
    monkeypatch.setattr(serve_cli, "_has_cuda", lambda: False)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_cli.add_serve_parser(parser.add_subparsers())
    return parser.parse_args(["serve", "--backend", "sglang", *argv])


def test_ecosched_mode_switches_the_plugin_on_with_the_config(model: Path) -> None:
    argv, env = serve_cli.sglang_command(_args("--model", str(model), "--policy", "sarathi", "--check-ledger"))
    assert argv[1:3] == ["-m", "sglang.launch_server"] and argv[argv.index("--host") + 1] == "127.0.0.1"
    assert env["SGLANG_PLUGINS"] == "ecosched" and env[plugin.MODE_ENV] == "ecosched"
    assert json.loads(env["ECOSCHED_CONFIG_JSON"])["policy"] == "sarathi"
    assert env["ECOSCHED_CHECK_LEDGER"] == "1"
    assert "--enable-mixed-chunk" in argv
    # the CPU recipe, and a KV cap
    assert argv[argv.index("--device") + 1] == "cpu" and "--disable-cuda-graph" in argv
    assert argv[argv.index("--max-total-tokens") + 1] == "65536" and env["SGLANG_USE_CPU_ENGINE"] == "0"


def test_engine_arguments_after_the_separator_win(model: Path) -> None:
    argv, _ = serve_cli.sglang_command(
        _args("--model", str(model), "--", "--max-total-tokens", "2048", "--attention-backend", "triton")
    )
    assert argv.count("--max-total-tokens") == 1 and argv[argv.index("--max-total-tokens") + 1] == "2048"
    assert argv.count("--attention-backend") == 1 and argv[argv.index("--attention-backend") + 1] == "triton"


@pytest.mark.parametrize("stock", [["--no-ecosched"], ["--policy", "sglang"]])
def test_stock_sglang_leaves_the_plugin_inert_unless_timed(model: Path, stock: list[str]) -> None:
    _, env = serve_cli.sglang_command(_args("--model", str(model), *stock))
    assert plugin.MODE_ENV not in env and "ECOSCHED_CONFIG_JSON" not in env
    assert env["SGLANG_PLUGINS"] == "ecosched"  # other installed plugins stay out for both arms
    _, env = serve_cli.sglang_command(_args("--model", str(model), *stock, "--stats", str(model / "s.bin")))
    assert env[plugin.MODE_ENV] == "timed" and env["ECOSCHED_STATS_PATH"].endswith("s.bin")


def test_a_gpu_machine_gets_no_cpu_recipe(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve_cli, "_has_cuda", lambda: True)
    argv, env = serve_cli.sglang_command(_args("--model", str(model), "--no-mixed-chunk"))
    assert "--device" not in argv and "--max-total-tokens" not in argv and "SGLANG_USE_CPU_ENGINE" not in env
    assert "--enable-mixed-chunk" not in argv


def test_a_wrong_sglang_version_is_refused_with_what_to_install(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sglang_version, "installed_version", lambda *names: "0.5.9")
    with pytest.raises(EngineVersionError, match=r"supports sglang 0\.5\.23 only.*found 0\.5\.9"):
        serve_cli.sglang_command(_args("--model", str(model)))
    monkeypatch.setattr(sglang_version, "installed_version", lambda *names: None)
    with pytest.raises(EngineVersionError, match=r"not installed.*install_sglang\.sh"):
        serve_cli.sglang_command(_args("--model", str(model)))


def test_the_plugin_is_inert_without_its_mode_and_outside_the_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "ecosched_adapters.sglang.plugin", raising=False)
    monkeypatch.delenv(plugin.MODE_ENV, raising=False)
    plugin.register()
    monkeypatch.setenv(plugin.MODE_ENV, "ecosched")
    plugin.register()  # not called from SGLang's run_scheduler_process: nothing to do
    assert "ecosched_adapters.sglang.plugin" not in sys.modules
    assert not plugin.in_scheduler_process()


def test_in_scheduler_process_sees_sglangs_entry_frame() -> None:
    namespace = {"__name__": "sglang.srt.managers.scheduler", "inner": plugin.in_scheduler_process}
    exec("def run_scheduler_process():\n    return inner()\n", namespace)
    assert namespace["run_scheduler_process"]() is True
