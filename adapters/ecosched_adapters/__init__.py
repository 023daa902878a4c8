"""Thin translation layers between engines and the ecosched core, one subpackage per engine
(vLLM, SGLang, TGI router, Ray Serve router). Each lands with its own issue; none is here yet."""
