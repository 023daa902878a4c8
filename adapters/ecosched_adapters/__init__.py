"""Thin translation layers between engines and the ecosched core, one subpackage per engine.
Landed: `vllm` (a scheduler class for vLLM 0.32's `--scheduler-cls`). SGLang, the TGI router and the
Ray Serve router arrive with their issues."""
