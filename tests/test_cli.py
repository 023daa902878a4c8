"""The `ecosched` command line: listing, configuration, and clear failures (exit status 2). The simulator's
commands (`simulate`, `demo`, `profile`) are tested in tests/sim/test_cli_simulate.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from ecosched import EcoschedConfig, load_config
from ecosched.cli import main
from ecosched.factory import PREDICTORS
from ecosched.policies import POLICIES

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def field_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted paths of every leaf field of the config tree."""
    paths = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            paths += field_paths(ann, f"{prefix}{name}.")
        else:
            paths.append(f"{prefix}{name}")
    return paths


def test_policies_lists_each_policy_with_its_description(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policies"]) == 0
    out = capsys.readouterr().out
    lines = {line.split(maxsplit=1)[0]: line.split(maxsplit=1)[1] for line in out.splitlines() if line.strip()}
    assert set(lines) == {e.name for e in POLICIES}
    for entry in POLICIES:
        assert lines[entry.name].strip() == entry.description.strip()
        assert lines[entry.name].strip()


def test_predictors_lists_each_predictor(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predictors"]) == 0
    out = capsys.readouterr().out
    names = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert names == {e.name for e in PREDICTORS}
    assert {"oracle", "noisy-oracle", "constant"} <= names


def test_config_prints_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert EcoschedConfig.model_validate(printed) == EcoschedConfig()


def test_config_set_override(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--set", "scheduler.max_num_seqs=7"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["scheduler"]["max_num_seqs"] == 7
    assert EcoschedConfig.model_validate(printed) == load_config(None, ["scheduler.max_num_seqs=7"])


def test_config_file_and_repeated_set(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "config",
        "--config",
        str(CONFIGS / "ablation_no_pipelining.yaml"),
        "--set",
        "scheduler.max_num_seqs=7",
        "--set",
        "policy=sjf",
    ]
    assert main(argv) == 0
    config = EcoschedConfig.model_validate(yaml.safe_load(capsys.readouterr().out))
    assert config.policies.ecoserve.pipelining is False
    assert config.scheduler.max_num_seqs == 7
    assert config.policy == "sjf"


def test_config_default_yaml_round_trips(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--config", str(CONFIGS / "default.yaml")]) == 0
    from_file = capsys.readouterr().out
    assert main(["config"]) == 0
    assert capsys.readouterr().out == from_file


def test_config_bad_key_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--set", "scheduler.max_num_seq=7"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("ecosched: error:")
    assert "max_num_seq'" in captured.err
    assert "max_num_seqs" in captured.err  # the known keys are listed
    assert "Traceback" not in captured.err


def test_config_bad_value_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--set", "cache.num_gpu_blocks=lots"]) == 2
    err = capsys.readouterr().err
    assert "cache.num_gpu_blocks" in err


def test_config_missing_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    assert main(["config", "--config", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_config_schema_prints_every_field_with_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--schema"]) == 0
    out = capsys.readouterr().out
    rows = {}
    for line in out.splitlines():
        path, _, rest = line.partition(" ")
        rows[path] = rest.strip()
    paths = field_paths(EcoschedConfig)
    assert len(paths) > 50
    assert set(rows) == set(paths)
    for path in paths:
        help_text = rows[path]
        assert "[default:" in help_text, path
        description = help_text.split("[default:")[0].strip()
        assert description, f"{path} has no help text"
    assert "scheduler.max_num_seqs" in rows and "[default: 256]" in rows["scheduler.max_num_seqs"]
    assert "policies.ecoserve.pipelining" in rows


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "policies", "predictors", "config"):
        assert command in out


@pytest.mark.parametrize("command", ["demo", "config", "policies"])
def test_subcommand_help_exits_0(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: ecosched" in capsys.readouterr().out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "usage" in capsys.readouterr().err


def test_console_script_exit_status() -> None:
    """The installed entry point exits with main's status (2 for a bad key), not 0 or a traceback."""
    code = "import sys; from ecosched.cli import main; sys.exit(main(sys.argv[1:]))"
    bad = subprocess.run(
        [sys.executable, "-c", code, "config", "--set", "nope=1"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2
    assert "ecosched: error:" in bad.stderr and "nope" in bad.stderr
    good = subprocess.run(
        [sys.executable, "-m", "ecosched.cli", "policies"], capture_output=True, text=True, timeout=60
    )
    assert good.returncode == 0
    assert "ecoserve" in good.stdout


def test_config_schema_defaults_are_the_json_values(capsys: pytest.CaptureFixture[str]) -> None:
    """Each `[default: X]` is X as written in YAML/JSON (so it can be pasted into a config file)."""
    assert main(["config", "--schema"]) == 0
    defaults = EcoschedConfig().model_dump(mode="json")
    for line in capsys.readouterr().out.splitlines():
        path, _, rest = line.partition(" ")
        shown = rest[rest.rindex("[default: ") + len("[default: ") : -1]
        value = defaults
        for part in path.split("."):
            value = value[part]
        assert json.loads(shown) == value, path
