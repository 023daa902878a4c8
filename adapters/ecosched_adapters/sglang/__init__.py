"""ecosched inside SGLang, through SGLang's official plugin entry points (group `sglang.srt.plugins`).

SGLang calls `register()` first thing in each of its processes. The plugin is inert unless
`ECOSCHED_SGLANG_MODE` is set (`ecosched serve --backend sglang` sets it), and then acts only in
SGLang's scheduler process, where it replaces SGLang's `Scheduler` class through `HookRegistry`:

- `ecosched`: `EcoschedSGLangScheduler`, the ecosched core in charge (see `scheduler.py`);
- `timed`: `TimedScheduler`, stock SGLang scheduling timed the way the ecosched one is, for
  comparisons (`ecosched serve --backend sglang --no-ecosched --stats PATH`).

Other processes (the HTTP server, the detokenizer) return at once, so they pay nothing. Run SGLang
with `SGLANG_PLUGINS=ecosched` to keep other installed plugins out (`ecosched serve` does).
"""

from __future__ import annotations

import os
import sys

PLUGIN_NAME = "ecosched"
MODE_ENV = "ECOSCHED_SGLANG_MODE"
MODES = ("ecosched", "timed")
# SGLang's scheduler subprocess enters this function and calls load_plugins() first thing
_SCHEDULER_ENTRY = ("sglang.srt.managers.scheduler", "run_scheduler_process")


def in_scheduler_process(max_depth: int = 64) -> bool:
    """True when called (at any depth) from SGLang's `run_scheduler_process`."""
    frame = sys._getframe(1)
    for _ in range(max_depth):
        if frame is None:
            return False
        if (frame.f_globals.get("__name__"), frame.f_code.co_name) == _SCHEDULER_ENTRY:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def register() -> None:
    """SGLang's plugin entry point."""
    mode = os.environ.get(MODE_ENV, "")
    if not mode or not in_scheduler_process():
        return
    from ecosched_adapters.sglang.plugin import install

    install(mode)
