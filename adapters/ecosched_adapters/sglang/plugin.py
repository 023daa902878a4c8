"""Installs the scheduler replacement and the retraction-order hook in SGLang's scheduler process."""

from __future__ import annotations

import logging

from ecosched.errors import ConfigError
from ecosched_adapters.sglang import MODE_ENV, MODES
from ecosched_adapters.sglang.version import check_sglang_version

logger = logging.getLogger("sglang.ecosched")

SCHEDULER_TARGET = "sglang.srt.managers.scheduler.Scheduler"
RETRACTION_ORDER_TARGET = "sglang.srt.managers.schedule_batch.ScheduleBatch._get_decode_retraction_order"


def install(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"{MODE_ENV}={mode!r}: expected one of {', '.join(MODES)}")
    check_sglang_version()
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    if mode == "ecosched":
        from ecosched_adapters.sglang.scheduler import EcoschedSGLangScheduler, retraction_order

        HookRegistry.register(SCHEDULER_TARGET, EcoschedSGLangScheduler, HookType.REPLACE)
        HookRegistry.register(RETRACTION_ORDER_TARGET, retraction_order, HookType.AROUND)
    else:
        from ecosched_adapters.sglang.timed import TimedScheduler

        HookRegistry.register(SCHEDULER_TARGET, TimedScheduler, HookType.REPLACE)
    logger.info("ecosched: SGLang plugin installed (%s)", mode)
