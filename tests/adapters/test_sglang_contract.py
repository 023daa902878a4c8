"""Contract with the SGLang internals the ecosched plugin subclasses, overrides, calls or hooks.

Each test names the internal it pins; a failure here means SGLang changed shape under the plugin
(see `ecosched_adapters/sglang/version.py`), not that ecosched's logic is wrong."""

from __future__ import annotations

import os
import sys

import pytest
from conftest import require_sglang

require_sglang()

import ast
import dataclasses
import inspect
import pkgutil
import textwrap
from array import array
from collections.abc import Callable
from functools import cache
from importlib.metadata import entry_points
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import sglang.srt.managers.scheduler as sgl_scheduler
from ecosched_adapters.sglang import _SCHEDULER_ENTRY, PLUGIN_NAME, in_scheduler_process
from ecosched_adapters.sglang import plugin as eco_plugin
from ecosched_adapters.sglang.scheduler import (
    EcoschedPrefillAdder,
    EcoschedSGLangScheduler,
    _finish_reason,
    retraction_order,
)
from ecosched_adapters.sglang.version import SUPPORTED_SGLANG, check_sglang_version
from sglang.srt.disaggregation.utils import DisaggregationMode
from sglang.srt.managers.schedule_batch import (
    FINISH_ABORT,
    FINISH_LENGTH,
    FINISH_MATCHED_STR,
    NextBatchPlan,
    Req,
    ReqKvInfo,
    ScheduleBatch,
)
from sglang.srt.managers.schedule_policy import AddReqResult, PrefillAdder, SchedulePolicy
from sglang.srt.managers.scheduler import Scheduler
from sglang.srt.plugins import hook_registry
from sglang.srt.plugins.hook_registry import HookRegistry, HookType
from sglang.srt.runtime_context import get_context, get_parallel
from sglang.srt.sampling.sampling_params import SamplingParams

from ecosched.core.request import FinishReason

P = inspect.Parameter
REPO_ROOT = Path(__file__).resolve().parents[2]


def params(owner: Any, name: str) -> list[inspect.Parameter]:
    """The parameters of `owner.name` (self included), failing with the internal's name."""
    fn = inspect.getattr_static(owner, name, None)
    label = f"{getattr(owner, '__qualname__', owner)}.{name}"
    assert fn is not None, f"SGLang internal {label} is gone; the ecosched plugin overrides or calls it"
    bound = isinstance(fn, classmethod)
    if isinstance(fn, (staticmethod, classmethod)):
        fn = fn.__func__
    assert callable(fn), f"SGLang internal {label} is no longer callable"
    return list(inspect.signature(fn).parameters.values())[1 if bound else 0 :]


def expect_positional(owner: Any, name: str, expected: list[str]) -> None:
    """The first parameters of `owner.name`, in order, as the plugin passes them."""
    got = [p.name for p in params(owner, name) if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    label = f"{getattr(owner, '__qualname__', owner)}.{name}"
    assert got[: len(expected)] == expected, (
        f"SGLang internal {label} changed its parameters: expected {expected} first, found {got}"
    )


@cache
def scheduler_self_attributes() -> frozenset[str]:
    """Every `self.X` that SGLang's Scheduler (with its mixins) assigns somewhere."""
    found: set[str] = set()
    modules = {sys.modules[c.__module__] for c in Scheduler.__mro__ if c.__module__.startswith("sglang.")}
    for module in modules:
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if isinstance(node, ast.Assign):
                stack: list[ast.expr] = list(node.targets)
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                stack = [node.target]
            else:
                continue
            while stack:
                t = stack.pop()
                if isinstance(t, (ast.Tuple, ast.List)):
                    stack.extend(t.elts)
                elif isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                    found.add(t.attr)
    return frozenset(found)


def function_calls(fn: Callable[..., Any]) -> list[ast.Call]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def call_name(call: ast.Call) -> str:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


# ---- version, entry point, plugin mechanism ----
def test_the_installed_sglang_is_the_supported_version() -> None:
    assert check_sglang_version() == dist_version("sglang") and dist_version("sglang").startswith(SUPPORTED_SGLANG)


def test_the_ecosched_entry_point_is_what_sglang_discovers() -> None:
    group = sgl_plugins_group()
    found = {ep.name: ep for ep in entry_points(group=group)}
    if PLUGIN_NAME not in found:
        metadata = [
            str(Path(p) / name)
            for p in sys.path
            if Path(p or ".").is_dir()
            for name in os.listdir(p or ".")
            if name.lower().startswith("ecosched") and name.endswith((".egg-info", ".dist-info"))
        ]
        pytest.fail(
            f"no {PLUGIN_NAME!r} entry point in group {group!r} as SGLang's load_plugins sees it (found "
            f"{sorted(found)}); ecosched metadata on sys.path, first one wins: {metadata}. Reinstall ecosched "
            "(pip install -e .) or remove a stale ecosched.egg-info that shadows the installed metadata",
            pytrace=False,
        )
    assert found[PLUGIN_NAME].value == "ecosched_adapters.sglang:register"


def sgl_plugins_group() -> str:
    from sglang.srt import plugins

    group = getattr(plugins, "GENERAL_PLUGINS_GROUP", None)
    assert group == "sglang.srt.plugins", f"SGLang's general plugin group is now {group!r}"
    assert "sglang.srt.plugins" in (REPO_ROOT / "pyproject.toml").read_text()
    return group


def test_run_scheduler_process_loads_plugins_first_then_builds_the_scheduler_by_name() -> None:
    fn = sgl_scheduler.run_scheduler_process
    assert (fn.__module__, fn.__name__) == _SCHEDULER_ENTRY, "in_scheduler_process() looks for this frame"
    body = ast.parse(inspect.getsource(fn)).body[0].body  # type: ignore[attr-defined]
    statements = [s for s in body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    first = statements[0]
    assert isinstance(first, ast.Expr) and isinstance(first.value, ast.Call), (
        "run_scheduler_process no longer starts with load_plugins(): the plugin would install too late"
    )
    assert call_name(first.value) == "load_plugins"
    # the module-global name `Scheduler` is what the REPLACE hook swaps
    assert any(isinstance(c.func, ast.Name) and c.func.id == "Scheduler" for c in function_calls(fn)), (
        "run_scheduler_process no longer calls the module-level Scheduler(...)"
    )


def test_in_scheduler_process_recognises_sglangs_entry_frame() -> None:
    namespace: dict[str, Any] = {"__name__": _SCHEDULER_ENTRY[0], "probe": in_scheduler_process}
    exec(f"def {_SCHEDULER_ENTRY[1]}():\n    return (lambda: probe())()\n", namespace)
    assert namespace[_SCHEDULER_ENTRY[1]]() is True
    assert in_scheduler_process() is False


def test_hook_registry_api() -> None:
    names = [p.name for p in params(HookRegistry, "register")]
    assert names[:3] == ["target", "hook", "hook_type"], f"HookRegistry.register changed: {names}"
    assert {HookType.REPLACE, HookType.AROUND} <= set(HookType)


def test_the_plugin_registers_hooks_on_targets_that_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, Any, HookType]] = []
    monkeypatch.setattr(
        HookRegistry, "register", lambda target, hook, hook_type=None, **_: calls.append((target, hook, hook_type))
    )
    eco_plugin.install("ecosched")
    assert calls == [
        (eco_plugin.SCHEDULER_TARGET, EcoschedSGLangScheduler, HookType.REPLACE),
        (eco_plugin.RETRACTION_ORDER_TARGET, retraction_order, HookType.AROUND),
    ]
    assert pkgutil.resolve_name(eco_plugin.SCHEDULER_TARGET) is Scheduler
    owner_path, attr = eco_plugin.RETRACTION_ORDER_TARGET.rsplit(".", 1)
    assert pkgutil.resolve_name(owner_path) is ScheduleBatch
    assert isinstance(ScheduleBatch.__dict__.get(attr), staticmethod), (
        "ScheduleBatch._get_decode_retraction_order is no longer a staticmethod"
    )


def test_an_around_hook_on_the_retraction_order_stays_a_staticmethod_and_gets_the_original(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw = ScheduleBatch.__dict__["_get_decode_retraction_order"]
    seen: list[Any] = []

    def hook(original: Callable[..., list[int]], reqs: list[Any], *args: Any, **kwargs: Any) -> list[int]:
        seen.append(original)
        return list(reversed(range(len(reqs))))

    monkeypatch.setattr(HookRegistry, "_hooks", hook_registry.defaultdict(list))
    monkeypatch.setattr(HookRegistry, "_patched", set())
    try:
        HookRegistry.register(eco_plugin.RETRACTION_ORDER_TARGET, hook, HookType.AROUND)
        HookRegistry.apply_hooks()
        assert isinstance(ScheduleBatch.__dict__["_get_decode_retraction_order"], staticmethod)
        batch = object.__new__(ScheduleBatch)  # retract_decode calls it on the instance
        assert batch._get_decode_retraction_order(["r0", "r1", "r2"]) == [2, 1, 0]
        assert seen == [raw.__func__]
    finally:
        ScheduleBatch._get_decode_retraction_order = raw
    calls = [c for c in function_calls(ScheduleBatch.retract_decode) if call_name(c) == "_get_decode_retraction_order"]
    assert calls, "ScheduleBatch.retract_decode no longer asks _get_decode_retraction_order for the order"


# ---- Scheduler ----
SCHEDULER_METHODS = {
    "_add_request_to_queue": ["self", "req", "is_retracted"],
    "get_next_batch_to_run": ["self", "running_batch", "last_batch"],
    "get_new_batch_prefill": ["self", "running_batch"],
    "process_batch_result": ["self", "batch", "result"],
    "get_prefill_adder_class": ["self"],
    "on_idle": ["self"],
    "_release_aborted_request": ["self", "req"],
    "send_abort_output": ["self", "abort_req", "req"],
    "init_schedule_policy": ["self"],
}


@pytest.mark.parametrize("name", sorted(SCHEDULER_METHODS))
def test_scheduler_methods_the_plugin_overrides_or_calls(name: str) -> None:
    expect_positional(Scheduler, name, SCHEDULER_METHODS[name])


def test_every_scheduler_override_overrides_something() -> None:
    own = {n for n, v in vars(EcoschedSGLangScheduler).items() if callable(v) and not n.startswith("__")}
    ours = {n for n in own if not hasattr(Scheduler, n)}
    # helpers of ours; everything else must exist in SGLang's Scheduler under the same name
    assert ours == {
        "_refuse_unsupported",
        "_core_request",
        "_reject",
        "_sort_waiting",
        "_note_prefix_hits",
        "_engine_free_blocks",
        "_retract",
        "_settle",
        "_batch_tokens",
        "_unplanned",
        "_reconcile",
        "_live_reqs",
        "keep_order",
        "capacity_tokens",
        "headroom_tokens",
        "check_kv",
        "summary",
        "_flush_stats",
    }, f"new or renamed methods not in SGLang's Scheduler: {sorted(ours)}"


def test_make_abort_req_and_the_abort_path() -> None:
    expect_positional(sgl_scheduler, "_make_abort_req", ["req", "finished_reason"])
    req = Req("r", "", array("q", [1, 2, 3]), SamplingParams(max_new_tokens=4))
    reason = {"type": "abort", "status_code": 400, "message": "no"}
    with get_context().override_server_args():
        abort = sgl_scheduler._make_abort_req(req, finished_reason=reason)
    assert (abort.rid, abort.finished_reason) == ("r", reason)


def test_schedule_policy_calc_priority_takes_the_waiting_queue_first() -> None:
    expect_positional(SchedulePolicy, "calc_priority", ["self", "waiting_queue"])
    getter = inspect.getsource(Scheduler._get_new_batch_prefill_raw)
    assert "self.policy.calc_priority(" in getter and "self.get_prefill_adder_class()(" in getter, (
        "Scheduler._get_new_batch_prefill_raw no longer sorts through self.policy.calc_priority or builds "
        "its adder through get_prefill_adder_class()"
    )


@pytest.mark.parametrize(
    "attr",
    [
        "page_size",
        "chunked_prefill_size",
        "max_total_num_tokens",
        "model_config",
        "max_running_requests",
        "max_prefill_tokens",
        "tree_cache",
        "policy",
        "enable_overlap",
        "is_mixed_chunk",
        "spec_algorithm",
        "disaggregation_mode",
        "dllm_config",
        "is_hybrid_swa",
        "enable_priority_preemption",
        "enable_hierarchical_cache",
        "prefill_decode_interval",
        "waiting_queue",
        "tokenizer",
        "token_to_kv_pool_allocator",
        "chunked_req",
        "result_queue",
    ],
)
def test_scheduler_attributes_the_plugin_reads(attr: str) -> None:
    assert attr in scheduler_self_attributes(), f"SGLang's Scheduler no longer sets self.{attr}"


def test_next_batch_plan_fields_and_refusal_markers() -> None:
    assert {"batch_to_run", "running_batch"} <= set(NextBatchPlan.__struct_fields__)
    assert DisaggregationMode.NULL in DisaggregationMode
    with get_context().override_server_args():
        assert get_parallel().pp_size == 1, "get_parallel().pp_size, read to refuse pipeline parallelism"


# ---- PrefillAdder ----
def test_prefill_adder_constructor_parameters() -> None:
    # SGLang builds the adder positionally in this order (Scheduler._get_new_batch_prefill_raw)
    expect_positional(
        PrefillAdder,
        "__init__",
        [
            "self",
            "page_size",
            "tree_cache",
            "token_to_kv_pool_allocator",
            "running_batch",
            "new_token_ratio",
            "rem_input_tokens",
            "rem_chunk_tokens",
            "num_mixed_decode_tokens",
        ],
    )


def test_prefill_adder_methods_the_adder_overrides() -> None:
    expect_positional(PrefillAdder, "add_one_req", ["self", "req", "has_chunked_req", "truncation_align_size"])
    expect_positional(PrefillAdder, "add_chunked_req", ["self", "req"])
    expect_positional(PrefillAdder, "_get_running_request_total_token_offset", ["self", "req"])
    expect_positional(PrefillAdder, "budget_state", ["self"])
    expect_positional(
        PrefillAdder, "_update_prefill_budget", ["self", "prefix_len", "extend_input_len", "max_new_tokens"]
    )
    check = {p.name: p.kind for p in params(PrefillAdder, "_check_prefill_budget")}
    assert check.get("extend_input_len") is P.KEYWORD_ONLY and check.get("total_tokens") is P.KEYWORD_ONLY, (
        f"PrefillAdder._check_prefill_budget no longer takes keyword-only extend_input_len/total_tokens: {check}"
    )
    own = {n for n, v in vars(EcoschedPrefillAdder).items() if callable(v) and not n.startswith("__")}
    assert own - {"_planned", "_run_planned"} <= set(dir(PrefillAdder)), "the adder overrides a method SGLang lost"


def test_add_req_result_members() -> None:
    assert {m.name for m in AddReqResult} >= {"CONTINUE", "NO_TOKEN", "OTHER"}


def test_prefill_adder_instance_attributes() -> None:
    cache = MagicMock()
    cache.supports_mamba.return_value = False
    alloc = MagicMock()
    alloc.page_size = 1
    with get_context().override_server_args():
        adder = PrefillAdder(1, cache, alloc, None, 1.0, 100, 50)
    for attr in (
        "rem_input_tokens",
        "rem_chunk_tokens",
        "per_req_token_overhead",
        "can_run_list",
        "new_chunked_req",
        "memory_budget",
        "running_batch",
    ):
        assert hasattr(adder, attr), f"PrefillAdder no longer sets self.{attr}"
    assert (adder.rem_input_tokens, adder.rem_chunk_tokens) == (100, 50)
    alloc.create_prefill_budget.assert_called_once()


# ---- ScheduleBatch and Req ----
def test_schedule_batch_members() -> None:
    expect_positional(ScheduleBatch, "_get_decode_retraction_order", ["reqs"])
    expect_positional(ScheduleBatch, "release_req", ["self", "idx", "remaing_req_count"])
    assert "keep_indices" in [p.name for p in params(ScheduleBatch, "filter_batch")]
    fields = {f.name for f in dataclasses.fields(ScheduleBatch)}
    missing = {"reqs", "extend_lens", "forward_mode", "batch_is_full", "seq_lens_sum"} - fields
    assert not missing, f"ScheduleBatch lost the fields {sorted(missing)}"
    for method in ("is_empty", "batch_size"):
        assert callable(getattr(ScheduleBatch, method, None)), f"ScheduleBatch.{method} is gone"


def test_req_fields_the_plugin_reads() -> None:
    sp = SamplingParams(max_new_tokens=7, ignore_eos=True, custom_params={"ecosched_slo_class": "batch"})
    req = Req("r", "", array("q", [5, 6, 7]), sp)
    assert req.rid == "r" and list(req.origin_input_ids) == [5, 6, 7] and len(req.output_ids) == 0
    assert (req.sampling_params.max_new_tokens, req.sampling_params.ignore_eos) == (7, True)
    assert req.sampling_params.custom_params == {"ecosched_slo_class": "batch"}
    assert isinstance(req.kv, ReqKvInfo)
    assert (req.kv.kv_allocated_len, req.kv.cache_protected_len, req.kv.req_pool_idx) == (0, 0, None)
    assert req.prefix_len == 0 and req.extend_end is None
    assert req.finished() is False and req.finished_reason is None
    req.init_next_round_input()
    req.extend_end = 3
    assert req.extend_len == 3
    req.finished_reason = FINISH_LENGTH(length=7)
    assert req.finished() is True


def test_finish_reasons_map_to_the_core() -> None:
    assert _finish_reason(FINISH_LENGTH(length=3)) is FinishReason.LENGTH
    assert _finish_reason(FINISH_ABORT("gone")) is FinishReason.ABORT
    assert _finish_reason(FINISH_MATCHED_STR(matched="x")) is FinishReason.STOP
