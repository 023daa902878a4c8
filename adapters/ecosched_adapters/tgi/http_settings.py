"""The settings of the TGI HTTP layer: TGI's router flags that shape the API, one validated record.

Each field carries its help text (`metadata["help"]`); the defaults are TGI's (`router/src/main.rs`
of the v3 backend, `router/src/server.rs`) unless the help says otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ecosched import __version__
from ecosched.errors import ConfigError


def _help(text: str, default: Any) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpSettings:
    """What `make_app` serves: the limits TGI's validation enforces and what /info reports."""

    model_id: str = field(metadata={"help": "Model id reported by /info, /v1/models and OpenAI responses."})
    max_input_tokens: int = field(metadata={"help": "Most prompt tokens after truncation (TGI --max-input-tokens)."})
    max_total_tokens: int = field(
        metadata={"help": "Most prompt plus generated tokens per request (TGI --max-total-tokens)."}
    )
    max_concurrent_requests: int = _help("Requests served at once; more are refused with 429 at once.", 128)
    max_best_of: int = _help("Largest `best_of` accepted (TGI --max-best-of).", 2)
    max_stop_sequences: int = _help("Most `stop` sequences per request (TGI --max-stop-sequences).", 4)
    max_top_n_tokens: int = _help("Largest `top_n_tokens` accepted (TGI --max-top-n-tokens).", 5)
    max_client_batch_size: int = _help("Most prompts in one /v1/completions request.", 4)
    validation_workers: int = _help("Threads that tokenize requests (TGI --validation-workers).", 2)
    payload_limit: int = _help("Largest request body in bytes; larger ones get 413 (TGI --payload-limit).", 2_000_000)
    generation_chunk_tokens: int = _help(
        "TGI's DEFAULT_GENERATION_LENGTH: the `max_new_tokens` counted against `max_total_tokens` at "
        "validation is min(max_new_tokens, this). The full value still goes to the router.",
        1024,
    )
    version: str = _help("Version reported by /info and in OpenAI `system_fingerprint`.", __version__)
    router: str = _help("Router name reported by /info (TGI reports its crate name).", "ecosched")
    model_sha: str | None = _help("Model revision reported by /info.", None)
    model_pipeline_tag: str | None = _help(
        "Hub pipeline tag reported by /info. As in TGI, POST / returns the prompt with the text "
        "(`return_full_text`) by default when it is `text-generation` or unset.",
        "text-generation",
    )
    docker_label: str | None = _help("Image label reported by /info and in `system_fingerprint`.", None)
    sha: str | None = _help("Router build revision reported by /info.", None)
    compute_type: str = _help("The `x-compute-type` response header (TGI reads COMPUTE_TYPE).", "gpu+optimized")
    chat_template: str | None = _help(
        "The model's Jinja chat template (tokenizer_config.json `chat_template`); unset: the plain "
        "template of `http_openai.plain_chat_prompt`.",
        None,
    )
    bos_token: str | None = _help("`bos_token` given to the chat template.", None)
    eos_token: str | None = _help("`eos_token` given to the chat template.", None)
    disable_grammar_support: bool = _help(
        "Refuse `grammar` / `response_format` (TGI --disable-grammar-support).", False
    )
    sse_keep_alive_s: float = _help(
        "Seconds of silence after which a stream sends a `:` comment (axum's default).", 15.0
    )
    api_key: str | None = _help(
        "When set, POST routes need `Authorization: Bearer <key>` (case-insensitive scheme) and answer 401 "
        "otherwise; GET routes stay open (TGI --api-key).",
        None,
    )
    info_extra: Mapping[str, Any] = field(
        default_factory=dict, metadata={"help": "ecosched fields merged into the /info object."}
    )

    def __post_init__(self) -> None:
        positive = (
            "max_input_tokens", "max_total_tokens", "max_concurrent_requests", "max_best_of",
            "max_client_batch_size", "validation_workers", "payload_limit", "generation_chunk_tokens",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"HttpSettings.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_stop_sequences", "max_top_n_tokens"):
            if getattr(self, name) < 0:
                raise ConfigError(f"HttpSettings.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_input_tokens >= self.max_total_tokens:
            raise ConfigError(
                "HttpSettings.max_input_tokens must be < max_total_tokens (as TGI requires), got "
                f"{self.max_input_tokens} >= {self.max_total_tokens}"
            )
        if self.sse_keep_alive_s <= 0:
            raise ConfigError(f"HttpSettings.sse_keep_alive_s must be > 0, got {self.sse_keep_alive_s}")

    @property
    def compat_return_full_text(self) -> bool:
        """POST /'s default `return_full_text` (TGI: true for `text-generation` models or no tag)."""
        return self.model_pipeline_tag in (None, "text-generation")

    @property
    def system_fingerprint(self) -> str:
        """OpenAI's `system_fingerprint` as TGI builds it: `{version}-{docker_label or 'native'}`."""
        return f"{self.version}-{self.docker_label or 'native'}"

    def info(self) -> dict[str, Any]:
        """The /info object (TGI's `Info`, `router/src/lib.rs`) with `info_extra` merged in."""
        info: dict[str, Any] = {
            "model_id": self.model_id,
            "model_sha": self.model_sha,
            "model_pipeline_tag": self.model_pipeline_tag,
            "max_concurrent_requests": self.max_concurrent_requests,
            "max_best_of": self.max_best_of,
            "max_stop_sequences": self.max_stop_sequences,
            "max_input_tokens": self.max_input_tokens,
            "max_total_tokens": self.max_total_tokens,
            "validation_workers": self.validation_workers,
            "max_client_batch_size": self.max_client_batch_size,
            "router": self.router,
            "version": self.version,
            "sha": self.sha,
            "docker_label": self.docker_label,
        }
        info.update(self.info_extra)
        return info


def settings_help() -> dict[str, str]:
    """Each setting's help text, by field name (for a CLI's --help)."""
    return {f.name: str(f.metadata.get("help", "")) for f in fields(HttpSettings)}
