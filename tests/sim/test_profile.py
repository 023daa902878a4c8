"""Engine profiles: the shipped YAML loads, the fit reproduces from the measurements, and the latency
model obeys the physics it claims (monotone step time, KV capacity, swap vs recompute)."""

from __future__ import annotations

import shlex
import shutil
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecosched.core.latency import LatencyModel, max_tokens_within
from ecosched.errors import ConfigError
from ecosched.sim import fit
from ecosched.sim.profile import PROFILES_ENV, Profile, ProfileLatencyModel, list_profiles, load_profile

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / ".." / "shared" / "data"
SHIPPED = ("h100-llama-2-7b", "a100-llama-2-7b", "h100-llama-2-70b-tp4")
# Measured when the profiles were fitted (MAPE 3.0-4.5%, max 12-20%: single jagged rows from GEMM
# tile steps), plus margin.
MAX_HELDOUT_MAPE_PCT = 6.0
MAX_HELDOUT_ABS_PCT = 25.0


def models() -> dict[str, ProfileLatencyModel]:
    return {name: load_profile(name).latency_model() for name in SHIPPED}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_loads_with_bounded_heldout_error(name: str) -> None:
    p = load_profile(name)
    assert p.name == name and name in list_profiles()
    assert p.layer_cost.num_heldout_rows >= 40
    assert p.layer_cost.heldout_mape_pct < MAX_HELDOUT_MAPE_PCT
    assert p.layer_cost.heldout_max_abs_pct < MAX_HELDOUT_ABS_PCT
    model: LatencyModel = p.latency_model()  # the core's protocol (checked by mypy)
    assert model.iteration_time_s(1, 0) > 0


@pytest.mark.parametrize("name", SHIPPED)
def test_fit_reproduces_from_the_measurements(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (DATA / "profiling").is_dir():
        pytest.fail(f"profiling data missing: expected {DATA.resolve()}/profiling (../shared/data from the repo root)")
    shipped = load_profile(name)
    argv = shlex.split(shipped.layer_cost.command)[3:]  # drop "python -m ecosched.sim.fit"
    out = tmp_path / f"{name}.yaml"
    argv[argv.index("--out") + 1] = str(out)
    monkeypatch.chdir(REPO)  # the command names the CSV relative to the repository root
    assert fit.main([*argv, "--name", name]) == 0
    refit = load_profile(str(out))
    assert refit.layer_cost.knots_tokens == shipped.layer_cost.knots_tokens
    assert refit.layer_cost.knots_ms == pytest.approx(shipped.layer_cost.knots_ms, abs=1e-6)
    assert refit.layer_cost.heldout_mape_pct == pytest.approx(shipped.layer_cost.heldout_mape_pct, abs=1e-3)
    same = {"layer_cost", "name"}
    assert refit.model_dump(exclude=same) == shipped.model_dump(exclude=same)


def test_kv_blocks_h100_7b_from_first_principles() -> None:
    p = load_profile("h100-llama-2-7b")
    assert p.gpu_memory_utilization == 0.9
    kv_per_token = 2 * 32 * 4096 * 2  # K and V, 32 layers, 4096 wide, fp16: 512 KiB
    assert p.kv_bytes_per_token() == kv_per_token
    usable = 81559 * 2**20 * 0.9 - 2 * 6.74e9  # an 80 GB H100 exposes 81559 MiB; at 0.9, minus fp16 weights
    reserve_bounds = (4 * 2**30, 0)  # activations etc.: between 4 GiB and nothing
    low, high = ((usable - r) / (16 * kv_per_token) for r in reserve_bounds)
    assert low < p.num_gpu_blocks(16) < high  # about 7,050 to 7,550 blocks, ~115k tokens
    assert p.num_gpu_blocks(32) == pytest.approx(p.num_gpu_blocks(16) / 2, abs=1)
    assert p.num_cpu_blocks(16) == 4 * 2**30 // (16 * kv_per_token)


def test_tensor_parallel_pools_memory_and_gqa_shrinks_kv() -> None:
    p = load_profile("h100-llama-2-70b-tp4")
    assert p.kv_bytes_per_token() == 2 * 80 * 8 * 128 * 2  # 8 KV heads: 320 KiB per token
    assert 25_000 < p.num_gpu_blocks(16) < 35_000  # 4 x 80 GB x 0.9 - 138 GB of weights


def test_no_room_for_kv_is_a_config_error() -> None:
    p = load_profile("h100-llama-2-70b-tp4").model_copy(update={"tensor_parallel": 1})
    with pytest.raises(ConfigError, match="no room for KV blocks"):
        p.num_gpu_blocks(16)


@pytest.mark.parametrize("name", SHIPPED)
def test_iteration_time_is_monotone_on_a_grid(name: str) -> None:
    m = _MODELS[name]
    tokens = [*range(0, 130), *range(130, 9000, 37)]
    for context in (0, 1000, 100_000):
        times = [m.iteration_time_s(b, context) for b in tokens]
        assert all(b >= a for a, b in pairwise(times))
    for b in (1, 64, 2048):
        times = [m.iteration_time_s(b, c) for c in range(0, 300_000, 997)]
        assert all(y >= x for x, y in pairwise(times))


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(SHIPPED),
    b=st.integers(0, 16384),
    db=st.integers(0, 4096),
    c=st.integers(0, 500_000),
    dc=st.integers(0, 100_000),
)
def test_iteration_time_is_monotone(name: str, b: int, db: int, c: int, dc: int) -> None:
    m = _MODELS[name]
    assert m.iteration_time_s(b + db, c) >= m.iteration_time_s(b, c)
    assert m.iteration_time_s(b, c + dc) >= m.iteration_time_s(b, c)


_MODELS = models()


def test_step_time_matches_iteration_time_for_decode_and_adds_prefill_attention() -> None:
    m = _MODELS["h100-llama-2-7b"]
    assert m.step_time_s(32, 32 * 1024, [], 32) == pytest.approx(m.iteration_time_s(32, 32 * 1024))
    prefill = m.step_time_s(2048, 0, [(0, 2048)], 1)
    assert prefill > m.iteration_time_s(2048, 0) - m.lm_head_s(2048)
    # chunking a prompt does not change its attention FLOPs: chunk (0, t) == chunks (i, 1) for i < t
    whole = m.prefill_attention_s(0, 300)
    assert whole == pytest.approx(sum(m.prefill_attention_s(i, 1) for i in range(300)))
    assert m.prefill_attention_s(0, 200) + m.prefill_attention_s(200, 100) == pytest.approx(whole)


def test_step_times_are_in_the_publicly_known_range() -> None:
    """Rough orders only: single-stream decode of Llama-2-7B fp16 is ~7 ms/token on H100 and ~12 on
    A100; a 2048-token prefill of 7B on H100 is ~2 * 6.7e9 * 2048 FLOPs at ~60% of 989 TFLOP/s."""
    h100, a100, big = (_MODELS[n] for n in SHIPPED)
    assert 0.005 < h100.step_time_s(1, 1024, [], 1) < 0.010
    assert 0.009 < a100.step_time_s(1, 1024, [], 1) < 0.015
    assert 0.035 < h100.step_time_s(2048, 0, [(0, 2048)], 1) < 0.060
    assert 0.012 < big.step_time_s(1, 1024, [], 1) < 0.030


def test_budget_search_runs_on_a_profile() -> None:
    m = _MODELS["h100-llama-2-7b"]
    budget = max_tokens_within(m, 0.050, 32 * 1024, 64, 8192)
    assert m.iteration_time_s(budget, 32 * 1024) <= 0.050 < m.iteration_time_s(budget + 1, 32 * 1024)


def test_swap_vs_recompute_follows_the_hardware() -> None:
    """Swap moves 2 * n * kv_bytes over PCIe; recompute adds a prefill of n tokens to a running step.

    Short contexts: recompute is nearly free (the layer GEMMs stream weights either way), so it wins.
    Long contexts: recompute grows like n (GEMMs) plus n^2 (attention), swap only like n.
    - A100, 7B (MHA, 512 KiB/token, PCIe gen4): the crossover lies within the context (~600 tokens).
    - H100, 7B: compute tripled, PCIe doubled; recompute stays cheaper up to 4096 tokens and the
      crossover moves beyond, where the quadratic attention term catches up (~11k, extrapolated).
    - H100 x 4, 70B (GQA: 8 KV heads, 4 PCIe links, 10x the FLOPs per token): swap always wins.
    """
    h100, a100, big = (_MODELS[n] for n in SHIPPED)

    def swap_wins(m: ProfileLatencyModel, n: int) -> bool:
        return 2 * m.swap_time_s(n) < m.recompute_time_s(n)

    assert not swap_wins(a100, 64) and swap_wins(a100, 2048)
    assert not any(swap_wins(h100, n) for n in range(16, 4097, 16)) and swap_wins(h100, 16384)
    assert all(swap_wins(big, n) for n in range(16, 4097, 16))
    assert a100.recompute_time_s(0) == a100.swap_time_s(0) == 0.0


def _write_bad(tmp_path: Path, old: str, new: str) -> Path:
    """The H100 7B profile with `old` replaced by `new` (a line dropped where `new` is empty)."""
    lines = (REPO / "configs" / "profiles" / "h100-llama-2-7b.yaml").read_text().splitlines()
    hits = [i for i, line in enumerate(lines) if line.startswith(old)]
    assert len(hits) == 1
    i = hits[0]
    lines[i : i + 1] = [lines[i].replace(old, new, 1)] if new else []
    bad = tmp_path / "bad-profile.yaml"
    bad.write_text("\n".join(lines) + "\n")
    return bad


def test_unknown_key_names_the_file_and_the_key(tmp_path: Path) -> None:
    bad = _write_bad(tmp_path, "  hbm_gb_per_s:", "  hbm_gbps: 1.0\n  hbm_gb_per_s:")
    with pytest.raises(ConfigError, match=r"bad-profile\.yaml(.|\n)*hbm_gbps"):
        load_profile(str(bad))


def test_missing_field_names_the_file_and_the_field(tmp_path: Path) -> None:
    bad = _write_bad(tmp_path, "  peak_tflops:", "")
    with pytest.raises(ConfigError, match=r"bad-profile\.yaml(.|\n)*peak_tflops"):
        load_profile(str(bad))


def test_decreasing_knots_and_broken_yaml_are_config_errors(tmp_path: Path) -> None:
    bad = _write_bad(tmp_path, "  knots_ms: [", "  knots_ms: [9.0, ")
    with pytest.raises(ConfigError, match=r"bad-profile\.yaml"):
        load_profile(str(bad))
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_profile(str(bad))


def test_unknown_name_lists_known_profiles() -> None:
    with pytest.raises(ConfigError, match=r"unknown profile 'h200-gpt-5'.*h100-llama-2-7b"):
        load_profile("h200-gpt-5")


def test_profiles_dir_can_be_overridden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(REPO / "configs" / "profiles" / "a100-llama-2-7b.yaml", tmp_path / "mine.yaml")
    monkeypatch.setenv(PROFILES_ENV, str(tmp_path))
    assert list_profiles() == ["mine"]
    assert isinstance(load_profile("mine"), Profile)
