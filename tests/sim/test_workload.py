"""Workloads: the Azure trace as shipped, the three trace formats on small files, re-timing, the length
rules, synthetic draws and SLO mixes."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, TypedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecosched.core.request import Request
from ecosched.sim.workload import (
    TRACE_FORMATS,
    Workload,
    WorkloadError,
    approx_tokens,
    load_trace,
    parse_slo_mix,
    retime,
    synthetic,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
AZURE = REPO_ROOT.parent / "shared" / "data" / "traces" / "azure_llm_2023_conv.csv"
AZURE_ROWS = 19_366


class Limits(TypedDict):
    max_model_len: int
    max_output_tokens: int


LIMITS: Limits = {"max_model_len": 4096, "max_output_tokens": 1024}
HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def azure_path() -> Path:
    if not AZURE.is_file():
        pytest.fail(f"the Azure conversation trace is missing: expected it at {AZURE} (see ../shared/data/README.md)")
    return AZURE


@pytest.fixture(scope="module")
def azure() -> Workload:
    return load_trace(azure_path(), **LIMITS)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def stamp(second: int, frac: str = "0000000") -> str:
    return f"2023-11-16 18:{second // 60:02d}:{second % 60:02d}.{frac}"


def csv_trace(tmp_path: Path, rows: list[str], header: str = HEADER, name: str = "t.csv") -> Path:
    return write(tmp_path, name, header + "".join(r + "\n" for r in rows))


def check_shape(w: Workload, max_model_len: int = 4096, max_output_tokens: int = 1024) -> None:
    assert w.requests[0].arrival_s == 0.0
    assert all(a.arrival_s <= b.arrival_s for a, b in zip(w.requests, w.requests[1:], strict=False))
    assert len({r.request_id for r in w.requests}) == w.num_requests
    for r in w.requests:
        assert 1 <= r.max_output_tokens <= max_output_tokens
        assert r.num_prompt_tokens + r.max_output_tokens <= max_model_len
        assert r.true_output_tokens is not None and r.true_output_tokens >= 1


# ------------------------------------------------------------------------------------------ the Azure trace


def test_azure_trace_loads_with_every_row_accounted(azure: Workload) -> None:
    check_shape(azure)
    assert azure.num_requests + azure.num_skipped_too_long == AZURE_ROWS
    assert azure.num_skipped_too_long == 416  # prompts of 4096 tokens or more
    assert azure.num_zero_output == 0
    assert 5.3 < azure.rate_rps < 5.6
    assert 1.0 < azure.burstiness < 1.2
    assert azure.name == "azure_llm_2023_conv.csv"
    assert azure.requests[1].arrival_s == pytest.approx(50.9951690 - 46.6805900, abs=1e-6)  # 7 digits kept


def test_azure_trace_lengths_match_the_readme() -> None:
    w = load_trace(azure_path(), max_model_len=32_768, max_output_tokens=1024)
    assert w.num_requests == AZURE_ROWS and w.num_capped_output == 0
    outputs = [r.true_output_tokens or 0 for r in w.requests]
    assert statistics.fmean(outputs) == pytest.approx(211, abs=1)
    assert statistics.median(r.num_prompt_tokens for r in w.requests) == 1020
    assert max(outputs) == 1000


@pytest.mark.parametrize("factor", [2.0, 0.5])
def test_retime_hits_the_rate_and_keeps_the_shape(azure: Workload, factor: float) -> None:
    target = azure.rate_rps * factor
    fast = retime(azure, target)
    assert fast.rate_rps == pytest.approx(target, rel=1e-12)
    assert fast.burstiness == pytest.approx(azure.burstiness, rel=1e-9)
    assert fast.name == f"azure_llm_2023_conv.csv@{target}/s"
    assert [r.request_id for r in fast.requests] == [r.request_id for r in azure.requests]
    i = azure.num_requests // 2
    assert fast.requests[i].arrival_s == pytest.approx(azure.requests[i].arrival_s / factor, rel=1e-12)


def arrivals_strategy() -> st.SearchStrategy[list[float]]:
    gaps = st.lists(st.floats(0.0, 100.0, allow_nan=False), min_size=2, max_size=50)
    return gaps.filter(lambda g: sum(g[1:]) > 1e-3)


@settings(max_examples=60, deadline=None)
@given(gaps=arrivals_strategy(), rate=st.floats(1e-3, 1e4))
def test_retime_invariants(gaps: list[float], rate: float) -> None:
    times = [sum(gaps[1 : i + 1]) for i in range(len(gaps))]
    w = Workload("w", tuple(Request(f"r-{i}", 10, 10, t, None, None, 5) for i, t in enumerate(times)))
    out = retime(w, rate)
    assert out.rate_rps == pytest.approx(rate, rel=1e-9)
    assert out.burstiness == pytest.approx(w.burstiness, rel=1e-6, abs=1e-9)
    assert out.requests[0].arrival_s == 0.0
    assert [(r.request_id, r.num_prompt_tokens) for r in out.requests] == [(r.request_id, 10) for r in w.requests]
    scale = w.rate_rps / rate
    assert all(b.arrival_s == pytest.approx(a.arrival_s * scale) for a, b in zip(w.requests, out.requests, strict=True))


@pytest.mark.parametrize("rate", [0.0, -1.0, math.inf, math.nan])
def test_retime_rejects_bad_rates(azure: Workload, rate: float) -> None:
    with pytest.raises(WorkloadError, match="rate_rps"):
        retime(azure, rate)


def test_retime_renames_once() -> None:
    w = syn(20)
    assert retime(retime(w, 2.0), 3.0).name == "synthetic(poisson, 20 req, 5.0/s)@3.0/s"


def test_retime_needs_a_spread_of_arrivals() -> None:
    w = Workload("one", (Request("r-0", 10, 10, 0.0),))
    with pytest.raises(WorkloadError, match="no arrival rate"):
        retime(w, 2.0)


# --------------------------------------------------------------------------------------- Azure CSV rules


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        (f"{stamp(2)},abc,5", "ContextTokens must be an integer >= 0 ('abc')"),
        (f"{stamp(2)},10,-3", "GeneratedTokens must be an integer >= 0 ('-3')"),
        (f"{stamp(2)},10,1.5", "GeneratedTokens must be an integer >= 0 ('1.5')"),
        (f"{stamp(2)},0,5", "ContextTokens must be >= 1"),
        ("yesterday,10,5", "TIMESTAMP is not an ISO date and time ('yesterday')"),
        ("2023-11-16 18:00:02.,10,5", "TIMESTAMP is not an ISO date and time"),
        (f"{stamp(2)},10", "expected 3 fields, found 2"),
    ],
)
def test_malformed_csv_rows_name_file_and_line(tmp_path: Path, row: str, needle: str) -> None:
    path = csv_trace(tmp_path, [f"{stamp(0)},10,5", "", row, f"{stamp(3)},10,5"])
    with pytest.raises(WorkloadError) as err:
        load_trace(path, **LIMITS)
    assert str(err.value).startswith(f"{path}:4: ")  # line 1 is the header, line 3 is blank
    assert needle in str(err.value)


def test_missing_columns_are_listed(tmp_path: Path) -> None:
    path = csv_trace(tmp_path, [f"{stamp(0)},10"], header="TIMESTAMP,Tokens\n")
    with pytest.raises(WorkloadError, match=r":1: missing column\(s\) ContextTokens, GeneratedTokens"):
        load_trace(path, **LIMITS)


def test_unsorted_rows_are_sorted_stably_and_start_at_zero(tmp_path: Path) -> None:
    rows = [f"{stamp(5)},11,1", f"{stamp(3, '5')},12,2", f"{stamp(5)},13,3", f"{stamp(3)},14,4"]
    w = load_trace(csv_trace(tmp_path, rows), **LIMITS)
    assert [r.num_prompt_tokens for r in w.requests] == [14, 12, 11, 13]
    assert [r.arrival_s for r in w.requests] == pytest.approx([0.0, 0.5, 2.0, 2.0])
    assert [r.request_id for r in w.requests] == ["azure-0", "azure-1", "azure-2", "azure-3"]


def test_timestamps_with_zones_and_any_fraction(tmp_path: Path) -> None:
    rows = ["2023-11-16T18:00:00+01:00,10,1", "2023-11-16T17:00:01.25+00:00,10,1", "2023-11-16T17:00:02Z,10,1"]
    w = load_trace(csv_trace(tmp_path, rows), **LIMITS)
    assert [r.arrival_s for r in w.requests] == pytest.approx([0.0, 1.25, 2.0])


def test_too_long_prompts_skip_or_fail(tmp_path: Path) -> None:
    rows = [f"{stamp(0)},100,5", f"{stamp(1)},100,5", f"{stamp(2)},99,5", f"{stamp(3)},98,500", f"{stamp(4)},10,5"]
    path = csv_trace(tmp_path, rows)
    w = load_trace(path, max_model_len=100, max_output_tokens=50)
    # prompt 100 leaves no room for a token; 99 leaves one; 98's output (500) is cut at the context
    assert w.num_skipped_too_long == 2
    assert [(r.num_prompt_tokens, r.max_output_tokens, r.true_output_tokens) for r in w.requests] == [
        (99, 1, 5),
        (98, 2, 500),
        (10, 50, 5),
    ]
    assert w.num_capped_output == 2
    assert w.requests[0].arrival_s == 0.0  # the first kept request starts the clock
    with pytest.raises(WorkloadError) as err:
        load_trace(path, max_model_len=100, max_output_tokens=50, on_too_long="error")
    assert str(err.value) == f"{path}:2: request too long: prompt 100 tokens + 1 output token > max_model_len 100"


def test_zero_output_is_one_token_and_counted(tmp_path: Path) -> None:
    w = load_trace(csv_trace(tmp_path, [f"{stamp(0)},10,0", f"{stamp(1)},10,3"]), **LIMITS)
    assert [r.true_output_tokens for r in w.requests] == [1, 3]
    assert w.num_zero_output == 1


def test_empty_traces_are_errors(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match=r"empty trace: no requests \(0 rows, 0 skipped"):
        load_trace(csv_trace(tmp_path, []), **LIMITS)
    with pytest.raises(WorkloadError, match=r"empty trace: no requests \(2 rows, 2 skipped as too long"):
        load_trace(csv_trace(tmp_path, [f"{stamp(0)},5000,1", f"{stamp(1)},4096,1"]), **LIMITS)
    with pytest.raises(WorkloadError, match=r"blank\.csv:1: empty trace: no header row"):
        load_trace(write(tmp_path, "blank.csv", ""), **LIMITS)
    with pytest.raises(WorkloadError, match="empty trace"):
        load_trace(write(tmp_path, "blank.jsonl", "\n\n"), **LIMITS)
    with pytest.raises(WorkloadError, match="empty trace"):
        load_trace(write(tmp_path, "blank.json", "[]"), **LIMITS)


def test_limit_keeps_the_earliest_requests(tmp_path: Path) -> None:
    rows = [f"{stamp(3)},10,1", f"{stamp(0)},5000,1", f"{stamp(1)},11,1", f"{stamp(2)},12,1"]
    w = load_trace(csv_trace(tmp_path, rows), limit=2, **LIMITS)
    assert [r.num_prompt_tokens for r in w.requests] == [11, 12]
    assert w.num_skipped_too_long == 1


def test_a_class_column_wins_over_the_mix(tmp_path: Path) -> None:
    header = "TIMESTAMP,ContextTokens,GeneratedTokens,SLOClass\n"
    rows = [f"{stamp(i)},10,1,{c}" for i, c in enumerate(["batch", "", "interactive"] * 20)]
    w = load_trace(csv_trace(tmp_path, rows, header), slo_mix={"gold": 1.0}, **LIMITS)
    assert [r.slo_class for r in w.requests[:3]] == ["batch", "gold", "interactive"]
    plain = load_trace(csv_trace(tmp_path, rows, header, "plain.csv"), **LIMITS)
    assert plain.requests[1].slo_class is None


# ----------------------------------------------------------------------------------- Mooncake, ShareGPT


def test_mooncake_jsonl(tmp_path: Path) -> None:
    lines = [
        {"timestamp": 1000, "input_length": 30, "output_length": 7, "hash_ids": [1, 2]},
        {"timestamp": 0, "input_length": 20, "output_length": 3, "slo_class": "batch"},
        {"timestamp": 2500.5, "input_length": 10, "output_length": 0},
    ]
    path = write(tmp_path, "m.jsonl", "\n".join(json.dumps(x) for x in lines[:2]) + "\n\n" + json.dumps(lines[2]))
    w = load_trace(path, **LIMITS)
    assert [(r.arrival_s, r.num_prompt_tokens, r.true_output_tokens) for r in w.requests] == [
        (0.0, 20, 3),
        (1.0, 30, 7),
        (2.5005, 10, 1),
    ]
    assert [r.slo_class for r in w.requests] == ["batch", None, None]
    assert w.requests[0].request_id == "mooncake-0" and w.num_zero_output == 1


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"timestamp": "now", "input_length": 1, "output_length": 1}', "timestamp must be a number"),
        ('{"timestamp": 5, "output_length": 1}', "input_length must be an integer >= 0 (None)"),
        ('{"timestamp": 5, "input_length": 2, "output_length": 1.5}', "output_length must be an integer >= 0 (1.5)"),
        ('{"timestamp": 5, "input_length": 2, "output_length": 1, "slo_class": 3}', "slo_class must be"),
    ],
)
def test_malformed_mooncake_lines_name_file_and_line(tmp_path: Path, bad: str, needle: str) -> None:
    good = '{"timestamp": 0, "input_length": 3, "output_length": 1}'
    path = write(tmp_path, "m.jsonl", f"{good}\n\n{bad}\n{good}\n")
    with pytest.raises(WorkloadError) as err:
        load_trace(path, **LIMITS)
    assert str(err.value).startswith(f"{path}:3: ") and needle in str(err.value)


def sharegpt_records() -> list[dict[str, object]]:
    return [
        {
            "id": "a",
            "conversations": [
                {"from": "system", "value": "Be brief."},
                {"from": "human", "value": "What is the capital of France?"},
                {"from": "gpt", "value": "Paris."},
                {"from": "human", "value": "And of Italy?"},
                {"from": "gpt", "value": "Rome, of course."},
                {"from": "human", "value": "Thanks"},  # never answered: no request
            ],
        },
        {
            "id": "b",
            "slo_class": "batch",
            "conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}],
        },
    ]


def test_sharegpt_turns_become_requests(tmp_path: Path) -> None:
    path = write(tmp_path, "s.json", json.dumps(sharegpt_records()))
    w = load_trace(path, **LIMITS, slo_mix={"interactive": 1.0}, sharegpt_rate_rps=2.0)
    assert w.num_requests == 3
    first, second, third = w.requests
    assert first.prompt == "Be brief.\nWhat is the capital of France?"
    assert (first.num_prompt_tokens, first.true_output_tokens) == (3 + 7, 2)
    assert second.prompt == "Be brief.\nWhat is the capital of France?\nParis.\nAnd of Italy?"
    assert second.num_prompt_tokens == 3 + 7 + 2 + 4 and second.true_output_tokens == 5
    assert (third.prompt, third.slo_class, third.true_output_tokens) == ("Hi", "batch", 1)
    assert [first.slo_class, second.slo_class] == ["interactive", "interactive"]
    assert w.num_zero_output == 1 and first.arrival_s == 0.0 < second.arrival_s < third.arrival_s
    assert load_trace(path, **LIMITS, sharegpt_rate_rps=2.0) == load_trace(path, **LIMITS, sharegpt_rate_rps=2.0)


def test_sharegpt_unanswered_turns_are_context(tmp_path: Path) -> None:
    turns = [("human", "one"), ("human", "two"), ("system", "three"), ("human", "four"), ("gpt", "five")]
    records = [{"id": "x", "conversations": [{"from": f, "value": v} for f, v in turns]}]
    w = load_trace(write(tmp_path, "s.json", json.dumps(records)), **LIMITS)
    assert [(r.prompt, r.num_prompt_tokens) for r in w.requests] == [("one\ntwo\nthree\nfour", 4)]


def test_sharegpt_prompt_text_is_capped_but_counted_whole(tmp_path: Path) -> None:
    long = "word " * 5000
    records = [{"id": "x", "conversations": [{"from": "human", "value": long}, {"from": "gpt", "value": "ok"}]}]
    w = load_trace(write(tmp_path, "s.json", json.dumps(records)), max_model_len=10_000, max_output_tokens=10)
    assert w.requests[0].num_prompt_tokens == 5000
    assert w.requests[0].prompt is not None and len(w.requests[0].prompt) == 8000


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ('{"a": 1}', "expected a JSON list of conversations (found dict)"),
        ('[{"conversations": []}, {"id": 1}]', "record 1: expected an object with a 'conversations' list"),
        ('[{"conversations": [{"from": "human"}]}]', "record 0: a turn needs string 'from' and 'value'"),
        ('[\n{"conversations": [}\n]', ":2: invalid JSON"),
    ],
)
def test_malformed_sharegpt_records(tmp_path: Path, data: str, needle: str) -> None:
    path = write(tmp_path, "s.json", data)
    with pytest.raises(WorkloadError) as err:
        load_trace(path, **LIMITS)
    assert str(err.value).startswith(str(path)) and needle in str(err.value)


def test_approx_tokens() -> None:
    assert approx_tokens("Hello, world.") == 4
    assert approx_tokens("internationalization") == 3  # 8 + 8 + 4 characters
    assert approx_tokens("") == 0


def test_format_detection(tmp_path: Path) -> None:
    csv_text = HEADER + f"{stamp(0)},10,1\n"
    assert load_trace(write(tmp_path, "a.txt", csv_text), **LIMITS).requests[0].request_id == "azure-0"
    jsonl = '{"timestamp": 0, "input_length": 3, "output_length": 1}\n'
    assert load_trace(write(tmp_path, "b.log", jsonl), **LIMITS).requests[0].request_id == "mooncake-0"
    assert load_trace(write(tmp_path, "c.dat", jsonl), fmt="mooncake", **LIMITS).num_requests == 1
    with pytest.raises(WorkloadError, match="cannot tell the trace format"):
        load_trace(write(tmp_path, "d.txt", "hello\n"), **LIMITS)
    with pytest.raises(WorkloadError, match="unknown trace format 'splitwise'; known: azure, mooncake, sharegpt"):
        load_trace(write(tmp_path, "e.csv", csv_text), fmt="splitwise", **LIMITS)
    with pytest.raises(WorkloadError, match="cannot open trace"):
        load_trace(tmp_path / "missing.csv", **LIMITS)
    assert TRACE_FORMATS == ("azure", "mooncake", "sharegpt")


@pytest.mark.parametrize(
    "kwargs",
    [{"max_model_len": 0}, {"max_output_tokens": -1}, {"limit": 0}, {"on_too_long": "warn"}, {"slo_mix": {"a": -1}}],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    path = csv_trace(tmp_path, [f"{stamp(0)},10,1"])
    with pytest.raises(WorkloadError):
        load_trace(path, **{**LIMITS, **kwargs})


def test_workload_checks_its_invariants() -> None:
    a, b = Request("r-0", 1, 1, 0.0), Request("r-1", 1, 1, 1.0)
    with pytest.raises(WorkloadError, match="sorted"):
        Workload("w", (b, a))
    with pytest.raises(WorkloadError, match="unique"):
        Workload("w", (a, a))
    assert Workload("w", [a, b]).requests == (a, b)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- synthetic


def syn(n: int = 5000, rate: float = 5.0, **kwargs: Any) -> Workload:
    return synthetic(n, rate, **{**LIMITS, **kwargs})


def test_synthetic_is_seeded() -> None:
    assert syn(300, seed=1) == syn(300, seed=1)
    assert syn(300, seed=1).requests != syn(300, seed=2).requests


def test_synthetic_poisson_rate_and_lengths() -> None:
    w = syn()
    check_shape(w)
    assert w.num_requests == 5000 and w.name == "synthetic(poisson, 5000 req, 5.0/s)"
    assert w.rate_rps == pytest.approx(5.0, rel=0.05)
    assert w.burstiness == pytest.approx(1.0, abs=0.05)
    assert statistics.median(r.num_prompt_tokens for r in w.requests) == pytest.approx(1020, rel=0.05)
    assert statistics.median(r.true_output_tokens or 0 for r in w.requests) == pytest.approx(129, rel=0.05)


@pytest.mark.parametrize("cv", [2.0, 4.0])
def test_synthetic_gamma_burstiness(cv: float) -> None:
    w = syn(10_000, arrival="gamma", burstiness=cv)
    assert w.burstiness == pytest.approx(cv, rel=0.1)
    assert w.rate_rps == pytest.approx(5.0, rel=0.1)
    assert w.name == f"synthetic(gamma cv={cv:g}, 10000 req, 5.0/s)"


def test_synthetic_redraws_prompts_that_cannot_run() -> None:
    w = syn(2000, max_model_len=1024, max_output_tokens=256)
    check_shape(w, 1024, 256)
    assert w.num_requests == 2000 and w.num_skipped_too_long > 500
    assert w.num_capped_output > 0


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"burstiness": 2.0}, "use arrival='gamma'"),
        ({"arrival": "uniform"}, "arrival must be"),
        ({"arrival": "gamma", "burstiness": 0.0}, "burstiness must be"),
        ({"prompt_median": 0.0}, "prompt_median must be"),
        ({"output_sigma": -1.0}, "sigmas must be"),
        ({"max_model_len": 2, "prompt_median": 1e6, "prompt_sigma": 0.0}, "almost never fit"),
    ],
)
def test_synthetic_rejects_bad_parameters(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(WorkloadError, match=needle):
        syn(10, **kwargs)
    with pytest.raises(WorkloadError, match="num_requests"):
        syn(0)


# -------------------------------------------------------------------------------------------- SLO mixes


def test_slo_mix_proportions_and_independence() -> None:
    mixed = syn(3000, slo_mix={"interactive": 0.7, "batch": 0.3})
    share = sum(r.slo_class == "interactive" for r in mixed.requests) / mixed.num_requests
    assert share == pytest.approx(0.7, abs=0.03)
    plain = syn(3000)
    assert {r.slo_class for r in plain.requests} == {None}
    strip = [(r.arrival_s, r.num_prompt_tokens, r.true_output_tokens) for r in mixed.requests]
    assert strip == [(r.arrival_s, r.num_prompt_tokens, r.true_output_tokens) for r in plain.requests]
    # the class of a request depends on the seed and its position, not on the lengths drawn
    other = syn(3000, slo_mix={"interactive": 0.7, "batch": 0.3}, prompt_median=300.0, output_sigma=1.0)
    assert [r.slo_class for r in other.requests] == [r.slo_class for r in mixed.requests]


def test_slo_mix_on_a_trace_leaves_lengths_alone(tmp_path: Path) -> None:
    path = csv_trace(tmp_path, [f"{stamp(i)},{10 + i},{1 + i}" for i in range(200)])
    plain = load_trace(path, **LIMITS)
    mixed = load_trace(path, **LIMITS, slo_mix=parse_slo_mix("a=1,b=1"))
    assert [r.slo_class for r in mixed.requests].count("a") in range(70, 131)
    assert [(r.arrival_s, r.num_prompt_tokens) for r in mixed.requests] == [
        (r.arrival_s, r.num_prompt_tokens) for r in plain.requests
    ]


def test_parse_slo_mix() -> None:
    assert parse_slo_mix("interactive=0.7, batch=0.3") == pytest.approx({"interactive": 0.7, "batch": 0.3})
    assert parse_slo_mix("interactive=7,batch=3") == pytest.approx({"interactive": 0.7, "batch": 0.3})
    assert parse_slo_mix("batch") == {"batch": 1.0}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "expected name=weight"),
        ("a=1,,b=2", "expected name=weight"),
        ("a=x", "weight of 'a' is not a number ('x')"),
        ("a=-1", "finite number >= 0"),
        ("a=nan", "finite number >= 0"),
        ("a=0,b=0", "must not all be zero"),
        ("a=1,a=2", "given twice"),
    ],
)
def test_parse_slo_mix_errors(text: str, needle: str) -> None:
    with pytest.raises(WorkloadError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        parse_slo_mix(text)
