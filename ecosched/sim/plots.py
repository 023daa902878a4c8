"""PNG plots of a comparison: the curves an engineer looks at first, and where the KV cache went.

- attainment.png: share of requests meeting both SLOs vs arrival rate (target line, capacities marked)
- latency.png: p99 TTFT and p99 TBT vs rate (log scale)
- jct.png: mean and p99 JCT vs rate
- kv_split.png: KV blocks over time split into used, reserved-but-unused and free, one panel per policy
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ecosched.sim.engine import KVSample
from ecosched.sim.metrics import RunMetrics


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _curves(runs: Sequence[RunMetrics]) -> dict[str, list[RunMetrics]]:
    by: dict[str, list[RunMetrics]] = defaultdict(list)
    for m in runs:
        by[m.policy].append(m)
    return {p: sorted(ms, key=lambda m: m.rate) for p, ms in by.items()}


def plot_all(
    out_dir: Path,
    runs: Sequence[RunMetrics],
    *,
    capacity: Mapping[str, float],
    target: float,
    timelines: Mapping[str, tuple[float, list[KVSample]]],
    title: str,
) -> list[Path]:
    """Writes the plots that have data into `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    curves = _curves([m for m in runs if not m.stopped_early])
    if curves:
        written.append(_attainment(out_dir / "attainment.png", curves, capacity, target, title))
        written.append(_latency(out_dir / "latency.png", curves, title))
        written.append(_jct(out_dir / "jct.png", curves, title))
    if timelines:
        written.append(_kv(out_dir / "kv_split.png", timelines, title))
    return written


def _attainment(
    path: Path, curves: dict[str, list[RunMetrics]], capacity: Mapping[str, float], target: float, title: str
) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for policy, ms in curves.items():
        (line,) = ax.plot([m.rate for m in ms], [m.slo_attainment * 100 for m in ms], marker="o", label=policy)
        if capacity.get(policy):
            ax.axvline(capacity[policy], color=line.get_color(), linestyle=":", linewidth=1)
    ax.axhline(target * 100, color="grey", linestyle="--", linewidth=1, label=f"target {target:.0%}")
    ax.set_xlabel("arrival rate (requests/s)")
    ax.set_ylabel("requests meeting TTFT and TBT SLOs (%)")
    ax.set_ylim(0, 102)
    ax.set_title(f"SLO attainment vs rate (dotted: capacity)\n{title}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _latency(path: Path, curves: dict[str, list[RunMetrics]], title: str) -> Path:
    return _two_panels(
        path,
        curves,
        ("p99 TTFT (s)", lambda m: m.p99_ttft_s),
        ("p99 TBT (ms)", lambda m: m.p99_tbt_s * 1e3),
        f"tail latency vs rate\n{title}",
    )


def _jct(path: Path, curves: dict[str, list[RunMetrics]], title: str) -> Path:
    return _two_panels(
        path,
        curves,
        ("mean JCT (s)", lambda m: m.mean_jct_s),
        ("p99 JCT (s)", lambda m: m.p99_jct_s),
        f"job completion time vs rate\n{title}",
    )


Panel = tuple[str, Callable[[RunMetrics], float]]


def _two_panels(path: Path, curves: dict[str, list[RunMetrics]], left: Panel, right: Panel, title: str) -> Path:
    """Two metrics vs rate side by side, one line per policy, log scale."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, (label, value) in zip(axes, (left, right), strict=True):
        for policy, ms in curves.items():
            ax.plot([m.rate for m in ms], [value(m) for m in ms], marker="o", label=policy)
        ax.set_ylabel(label)
        ax.set_xlabel("arrival rate (requests/s)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _kv(path: Path, timelines: Mapping[str, tuple[float, list[KVSample]]], title: str) -> Path:
    plt = _pyplot()
    n = len(timelines)
    fig, axes = plt.subplots(n, 1, figsize=(9, 1.9 * n + 0.8), sharex=True, squeeze=False)
    for ax, (policy, (rate, samples)) in zip(axes[:, 0], timelines.items(), strict=True):
        t = [s.t_s for s in samples]
        ax.stackplot(
            t,
            [s.used for s in samples],
            [s.reserved_unused for s in samples],
            [s.free for s in samples],
            labels=["used", "reserved, unused", "free"],
            colors=["#3b6ea5", "#f2a541", "#dddddd"],
        )
        ax.set_ylabel("blocks", fontsize=8)
        ax.set_title(f"{policy} at {rate:.2f} req/s", fontsize=8, loc="left")
        ax.margins(x=0)
    axes[0, 0].legend(loc="upper right", fontsize=7, ncol=3)
    axes[-1, 0].set_xlabel("simulated time (s)")
    fig.suptitle(f"KV cache over time\n{title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
