"""`ecosched simulate`, `ecosched demo` and `ecosched profile`: outputs, determinism, clear failures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ecosched.cli import main

REQUIRED = {
    "policy", "rate", "num_requests", "throughput_rps", "goodput_rps", "slo_attainment", "mean_jct_s",
    "p99_jct_s", "p99_ttft_s", "p99_tbt_s", "preemptions",
}  # fmt: skip


def test_simulate_writes_json_csv_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["simulate", "--num-requests", "120", "--policies", "vllm,ecoserve", "--rates", "4,12"]
    argv += ["--out", str(tmp_path), "--jobs", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    data = json.loads((tmp_path / "results.json").read_text())
    runs = data["runs"]
    assert [(r["policy"], r["rate"]) for r in runs] == [
        ("vllm", 4.0), ("ecoserve", 4.0), ("vllm", 12.0), ("ecoserve", 12.0)
    ]  # fmt: skip
    for r in runs:
        assert set(r) >= REQUIRED
        assert r["num_requests"] == 120
        assert 0.0 <= r["slo_attainment"] <= 1.0
        assert r["goodput_rps"] <= r["throughput_rps"] + 1e-9
    assert data["capacity"] == {}
    with (tmp_path / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["policy"], float(r["rate"])) for r in rows] == [(r["policy"], r["rate"]) for r in runs]
    for name in ("attainment.png", "latency.png", "jct.png", "kv_split.png"):
        png = tmp_path / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert "SLO met" in out and "ecoserve" in out


def test_simulate_find_capacity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["simulate", "--num-requests", "150", "--policies", "vllm", "--find-capacity", "--capacity-tol", "0.2"]
    argv += ["--out", str(tmp_path), "--jobs", "1", "--json", "--no-plots"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    cap = data["capacity"]["vllm"]
    assert cap > 0
    evaluated = {r["rate"]: r for r in data["runs"]}
    # the capacity is a rate that was run and met the target; the bracket's upper end failed it
    assert evaluated[cap]["slo_attainment"] >= 0.9
    above = [r for rate, r in evaluated.items() if rate > cap]
    assert above and all(r["slo_attainment"] < 0.9 or r["stopped_early"] for r in above)
    assert min(rate for rate in evaluated if rate > cap) <= cap * 1.2 + 1e-9


def test_simulate_is_deterministic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def once(out: Path) -> list[dict[str, object]]:
        argv = ["simulate", "--num-requests", "80", "--policies", "ecoserve,sjf", "--rates", "8", "--seed", "3"]
        assert main([*argv, "--out", str(out), "--jobs", "1", "--no-plots", "--json"]) == 0
        runs = json.loads(capsys.readouterr().out)["runs"]
        for r in runs:  # wall-clock figures are the only ones allowed to differ
            for key in ("sim_wall_s", "requests_per_wall_s", "sched_us_per_step_mean", "sched_us_per_step_p99"):
                r.pop(key)
        return runs  # type: ignore[no-any-return]

    assert once(tmp_path / "a") == once(tmp_path / "b")


def test_demo_runs_the_simulator(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--num-requests", "60", "--policies", "sarathi,ecoserve", "--rates", "5", "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = [line.split()[0] for line in out.splitlines() if line.split() and line.split()[0] in {"sarathi", "ecoserve"}]
    assert sorted(rows) == ["ecoserve", "sarathi"]
    assert (tmp_path / "attainment.png").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--policies", "vllm,ecoserv", "--rates", "5"], "ecoserv'"),
        (["--rates", "5,-1"], "positive"),
        (["--rates", "fast"], "comma-separated numbers"),
        ([], "--rates"),
        (["--rates", "5", "--profile", "no-such-gpu"], "h100-llama-2-7b"),
        (["--rates", "5", "--set", "cache.nope=1"], "nope"),
        (["--rates", "5", "--trace", "does/not/exist.csv"], "exist.csv"),
    ],
)
def test_simulate_bad_input_exits_2_before_running(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", "--num-requests", "20", "--out", str(tmp_path / "out"), *argv]) == 2
    captured = capsys.readouterr()
    assert "ecosched: error:" in captured.err
    assert message in captured.err
    assert not (tmp_path / "out" / "results.json").exists()


def test_simulate_reads_a_trace_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.csv"
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    rows += [
        f"2023-11-16 18:15:{10 + i // 4:02d}.{i % 4 * 25:02d}00000,{200 + 37 * i},{20 + 11 * i}" for i in range(30)
    ]
    rows.append("2023-11-16 18:15:59.0000000,5000,10")  # longer than Llama-2's 4096 context: skipped
    trace.write_text("\n".join(rows) + "\n")
    argv = ["simulate", "--trace", str(trace), "--policies", "vllm", "--rates", "2", "--out", str(tmp_path / "o")]
    assert main([*argv, "--no-plots", "--json"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["setup"]["num_requests"] == 30
    assert data["setup"]["num_skipped_too_long"] == 1
    assert data["runs"][0]["num_finished"] == 30
    assert "1 skipped as too long" in captured.err


def test_simulate_too_long_error_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:10.0,100,5\n2023-11-16 18:15:11.0,9000,5\n"
    )
    argv = ["simulate", "--trace", str(trace), "--rates", "1", "--on-too-long", "error", "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "t.csv:3" in err


def test_profile_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "list"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert {"h100-llama-2-7b", "a100-llama-2-7b", "h100-llama-2-70b-tp4"} <= set(names)
    assert main(["profile", "show", "a100-llama-2-7b"]) == 0
    out = capsys.readouterr().out
    assert "A100" in out and "sample step times" in out


def test_simulate_help_names_the_outputs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--trace", "--profile", "--policies", "--rates", "--find-capacity", "--out", "--seed"):
        assert flag in out
    assert "results.json" in out


def test_simulate_logs_outputs_for_online_learning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ecosched.prediction_log import read_records

    convs = [
        {
            "id": f"c{i}",
            "conversations": [
                {"from": "human", "value": f"question {i} " + "word " * (5 + i)},
                {"from": "gpt", "value": "answer " * (3 + 7 * i)},
            ],
        }
        for i in range(12)
    ]
    trace = tmp_path / "chat.json"
    trace.write_text(json.dumps(convs))
    log = tmp_path / "logs" / "outputs.jsonl"
    argv = ["simulate", "--trace", str(trace), "--policies", "vllm,sjf", "--rates", "2", "--out", str(tmp_path / "o")]
    assert main([*argv, "--no-plots", "--json", "--log-outputs", str(log), "--jobs", "1"]) == 0
    capsys.readouterr()
    records = read_records(log)
    assert len(records) == 24  # 12 requests, two policies
    by_prompt = {r.prompt: r.output_tokens for r in records}
    assert len(by_prompt) == 12
    assert all(p.startswith("question") or "question" in p for p in by_prompt)
    # the logged length is what the engine produced: longer answers give more tokens
    ordered = [by_prompt[next(p for p in by_prompt if f"question {i} " in p)] for i in range(12)]
    assert ordered == sorted(ordered) and ordered[0] < ordered[-1]
