"""The configuration tree: shipped YAML files, strict validation, CLI-style overrides, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ecosched.config import EcoschedConfig, load_config
from ecosched.errors import ConfigError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_YAML = CONFIGS / "default.yaml"
ALL_YAML = sorted(CONFIGS.glob("*.yaml")) + sorted(CONFIGS.glob("*.yml"))


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---- shipped files ----


def test_default_yaml_equals_the_model_defaults() -> None:
    assert load_config(DEFAULT_YAML) == EcoschedConfig()


def test_default_yaml_writes_out_every_field() -> None:
    # Equality above would also hold for a file that leaves fields out; the raw mapping must be complete.
    raw = yaml.safe_load(DEFAULT_YAML.read_text())
    assert raw == EcoschedConfig().model_dump(mode="json")


def test_configs_directory_has_the_expected_files() -> None:
    names = {p.name for p in ALL_YAML}
    assert {"default.yaml", "slo_classes.yaml", "ablation_no_pipelining.yaml"} <= names


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: p.name)
def test_every_shipped_yaml_validates(path: Path) -> None:
    config = load_config(path)
    assert isinstance(config, EcoschedConfig)
    assert config.slo.default_class in config.slo.classes


def test_slo_classes_example() -> None:
    config = load_config(CONFIGS / "slo_classes.yaml")
    assert set(config.slo.classes) == {"chat", "code", "batch"}
    assert config.slo.default_class in config.slo.classes
    ranks = {name: c.rank for name, c in config.slo.classes.items()}
    assert ranks["chat"] < ranks["batch"]


def test_ablation_no_pipelining() -> None:
    config = load_config(CONFIGS / "ablation_no_pipelining.yaml")
    assert config.policy == "ecoserve"
    assert config.policies.ecoserve.pipelining is False
    # Only pipelining differs from the defaults.
    expected = EcoschedConfig().model_dump()
    expected["policies"]["ecoserve"]["pipelining"] = False
    assert config.model_dump() == expected


def test_no_file_gives_defaults() -> None:
    assert load_config() == EcoschedConfig()
    assert load_config(None, []) == EcoschedConfig()


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == EcoschedConfig()


# ---- strict validation ----


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, "policy: vllm\nbogus_key: 1\n")
    with pytest.raises(ConfigError, match="bogus_key") as exc:
        load_config(path)
    assert str(path) in str(exc.value)


def test_unknown_nested_key(tmp_path: Path) -> None:
    path = write(tmp_path, "cache:\n  num_gpu_blocks: 10\n  bogus_blocks: 3\n")
    with pytest.raises(ConfigError, match=r"cache\.bogus_blocks"):
        load_config(path)


def test_unknown_deeply_nested_key(tmp_path: Path) -> None:
    path = write(tmp_path, "policies:\n  ecoserve:\n    pipelineing: false\n")
    with pytest.raises(ConfigError, match=r"policies\.ecoserve\.pipelineing"):
        load_config(path)


def test_unknown_key_in_slo_class(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "slo:\n  classes:\n    interactive: {ttft_ms: 1, tbt_ms: 1, priority: 3}\n  default_class: interactive\n",
    )
    with pytest.raises(ConfigError, match="priority"):
        load_config(path)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("cache:\n  num_gpu_blocks: lots\n", "cache.num_gpu_blocks"),
        ("scheduler:\n  chunked_prefill: maybe\n", "scheduler.chunked_prefill"),
        ("policies:\n  ecoserve:\n    preempt_mode: evict\n", "policies.ecoserve.preempt_mode"),
        ("cache: 12\n", "cache"),
        ("policy: [vllm]\n", "policy"),
    ],
)
def test_wrong_type_is_a_config_error(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text))
    assert field in str(exc.value)


@pytest.mark.parametrize(
    "text",
    [
        "cache:\n  num_gpu_blocks: 0\n",
        "cache:\n  block_size: -16\n",
        "predictor:\n  padding:\n    quantile: 1.5\n",
        "policies:\n  ecoserve:\n    global_reserve_fraction: 1.0\n",
    ],
)
def test_out_of_range_value_is_a_config_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, text))


def test_config_is_immutable() -> None:
    config = EcoschedConfig()
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        config.scheduler.max_num_seqs = 1  # type: ignore[misc]
    assert config.scheduler.max_num_seqs == 256


# ---- SLO classes ----


def test_slo_default_class_must_exist(tmp_path: Path) -> None:
    path = write(tmp_path, "slo:\n  default_class: platinum\n")
    with pytest.raises(ConfigError, match="platinum") as exc:
        load_config(path)
    # The message lists the classes that do exist.
    assert "interactive" in str(exc.value) and "batch" in str(exc.value)


def test_slo_classes_replaced_without_default_class_fails(tmp_path: Path) -> None:
    # Replacing the classes but keeping the default `interactive` default_class must not pass silently.
    path = write(tmp_path, "slo:\n  classes:\n    chat: {ttft_ms: 1000, tbt_ms: 100}\n")
    with pytest.raises(ConfigError, match="interactive"):
        load_config(path)


def test_slo_class_requires_targets(tmp_path: Path) -> None:
    path = write(tmp_path, "slo:\n  classes:\n    chat: {ttft_ms: 1000}\n  default_class: chat\n")
    with pytest.raises(ConfigError, match="tbt_ms"):
        load_config(path)


# ---- overrides ----


def test_override_applies_on_top_of_a_file() -> None:
    config = load_config(DEFAULT_YAML, ["scheduler.max_num_seqs=8"])
    assert config.scheduler.max_num_seqs == 8
    assert config.model_dump(exclude={"scheduler"}) == EcoschedConfig().model_dump(exclude={"scheduler"})


def test_override_without_a_file() -> None:
    config = load_config(None, ["scheduler.max_num_seqs=8", "policy=vllm"])
    assert config.scheduler.max_num_seqs == 8
    assert config.policy == "vllm"


def test_override_wins_over_the_file_and_keeps_siblings(tmp_path: Path) -> None:
    path = write(tmp_path, "cache:\n  num_gpu_blocks: 100\n  block_size: 32\n")
    config = load_config(path, ["cache.num_gpu_blocks=200"])
    assert config.cache.num_gpu_blocks == 200
    assert config.cache.block_size == 32


def test_override_values_are_parsed_as_yaml() -> None:
    config = load_config(
        None,
        [
            "policies.ecoserve.pipelining=false",
            "predictor.padding.quantile=0.8",
            "policies.ecoserve.rl_bucket_edges=[10, 20]",
            "predictor.kind=constant",
        ],
    )
    assert config.policies.ecoserve.pipelining is False
    assert config.predictor.padding.quantile == 0.8
    assert config.policies.ecoserve.rl_bucket_edges == (10, 20)
    assert config.predictor.kind == "constant"


def test_later_override_wins() -> None:
    config = load_config(None, ["scheduler.max_num_seqs=8", "scheduler.max_num_seqs=9"])
    assert config.scheduler.max_num_seqs == 9


def test_override_of_a_field_inside_a_default_slo_class() -> None:
    # `--set slo.classes.interactive.ttft_ms=500` should change one target of the default class and keep
    # the rest (its tbt_ms and rank, and the `batch` class).
    config = load_config(None, ["slo.classes.interactive.ttft_ms=500"])
    assert config.slo.classes["interactive"].ttft_ms == 500
    assert config.slo.classes["interactive"].tbt_ms == EcoschedConfig().slo.classes["interactive"].tbt_ms
    assert set(config.slo.classes) == {"interactive", "batch"}


def test_override_of_unknown_nested_key_lists_known_keys() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["scheduler.max_num_seq=8"])
    message = str(exc.value)
    assert "max_num_seq'" in message
    for known in ("max_num_seqs", "max_num_batched_tokens", "max_admission_scan", "chunked_prefill"):
        assert known in message


def test_override_of_unknown_top_level_key_lists_known_keys() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(DEFAULT_YAML, ["shceduler.max_num_seqs=8"])
    message = str(exc.value)
    assert "shceduler" in message
    for known in ("policy", "cache", "scheduler", "slo", "predictor", "latency", "policies"):
        assert known in message


@pytest.mark.parametrize("item", ["scheduler.max_num_seqs", "scheduler.max_num_seqs 8", "", "=8"])
def test_malformed_override(item: str) -> None:
    with pytest.raises(ConfigError, match="KEY"):
        load_config(None, [item])


def test_override_with_invalid_value_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"scheduler\.max_num_seqs"):
        load_config(None, ["scheduler.max_num_seqs=many"])
    with pytest.raises(ConfigError, match=r"scheduler\.max_num_seqs"):
        load_config(None, ["scheduler.max_num_seqs=0"])


# ---- file errors ----


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(path) in str(exc.value)


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "cache: [1, 2\npolicy: vllm\n", name="broken.yaml")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(path) in str(exc.value)
    assert "YAML" in str(exc.value)


def test_non_mapping_yaml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "- policy\n- vllm\n", name="list.yaml")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(path) in str(exc.value)
