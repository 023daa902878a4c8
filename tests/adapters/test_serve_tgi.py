"""`ecosched serve --backend tgi`: the router command it builds (printed by --dry-run), which must
parse back through `text-generation-router` into the intended RouterOptions. Nothing is started."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("aiohttp", reason="the TGI router needs aiohttp: pip install -e '.[tgi]'")

from ecosched_adapters.tgi import launcher_cli
from ecosched_adapters.tgi.app import RouterOptions

from ecosched.errors import ConfigError
from ecosched.serving import serve_cli


@pytest.fixture(autouse=True)
def no_default_predictor(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default predictor depends on whether onnxruntime is installed; keep it out."""
    monkeypatch.setattr(serve_cli, "_default_predictor", lambda config, overrides: None)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_cli.add_serve_parser(parser.add_subparsers())
    return parser.parse_args(["serve", "--backend", "tgi", *argv])


def _router_options(argv: list[str]) -> RouterOptions:
    """What the router would run with, given the command `serve` built."""
    assert argv[:3] == [sys.executable, "-m", "ecosched_adapters.tgi.launcher_cli"]
    return launcher_cli.router_options(launcher_cli.parse_args(argv[3:]), {})


def test_dry_run_prints_the_router_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    args = _args("--shard-uds-path", "/tmp/tgi-shard", "--policy", "sarathi", "--port", "8123",
                 "--stats", str(tmp_path / "s.bin"), "--check-ledger", "--set", "slo.default_class=batch",
                 "--dry-run")  # fmt: skip
    assert serve_cli.serve_command(args) == 0
    argv = json.loads(capsys.readouterr().out)["argv"]
    opts = _router_options(argv)
    assert opts == RouterOptions(
        master_shard_uds_path="/tmp/tgi-shard-0", port=8123, prometheus_port=8123, policy="sarathi",
        config_overrides=("slo.default_class=batch",), stats_path=str(tmp_path / "s.bin"), check_ledger=True,
    )  # fmt: skip


@pytest.mark.parametrize("stock", [["--no-ecosched"], ["--policy", "tgi"]])
def test_stock_tgi_is_the_tgi_fifo_policy(stock: list[str]) -> None:
    argv, _ = serve_cli.tgi_command(_args(*stock))
    opts = _router_options(argv)
    assert opts.policy == "tgi-fifo" and opts.master_shard_uds_path == "/tmp/text-generation-server-0"
    # the ecosched arm differs in the policy only
    ecosched_argv, _ = serve_cli.tgi_command(_args("--policy", "ecoserve"))
    assert [a for a in ecosched_argv if a != "ecoserve"] == [a for a in argv if a != "tgi-fifo"]


def test_model_is_the_tokenizer_and_router_arguments_after_the_separator_win(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text("{}")
    argv, _ = serve_cli.tgi_command(_args("--model", str(tmp_path), "--", "--port", "9999", "--max-batch-size", "8"))
    assert argv.count("--port") == 1 and argv[argv.index("--port") + 1] == "9999"
    opts = _router_options(argv)
    assert opts.tokenizer_name == str(tmp_path) and opts.model_id == str(tmp_path) and opts.max_batch_size == 8


def test_the_config_is_checked_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope"):
        serve_cli.tgi_command(_args("--set", "nope.field=1"))
    config = tmp_path / "c.yaml"
    config.write_text("policy: sjf\n")
    argv, _ = serve_cli.tgi_command(_args("--config", str(config), "--predictor", "constant"))
    assert argv[argv.index("--ecosched-config") + 1] == str(config)
    assert argv[argv.index("--ecosched-set") + 1] == "predictor.kind=constant"
    assert launcher_cli.check_ecosched_settings(_router_options(argv)) == "sjf"


def test_vllm_and_sglang_still_need_a_model() -> None:
    parser = argparse.ArgumentParser()
    serve_cli.add_serve_parser(parser.add_subparsers())
    with pytest.raises(ConfigError, match="--model is required for --backend vllm"):
        serve_cli._model_and_extra(parser.parse_args(["serve", "--backend", "vllm"]))
