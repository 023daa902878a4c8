"""HTTP conformance of ecosched's TGI router with the stand-in shard behind it, checked with TGI's own
Python client (`text-generation==0.7.0`, written by TGI's authors against their router) for the
compat route, SSE and errors, and with raw HTTP for the OpenAI routes and /metrics."""

from __future__ import annotations

import asyncio
import json
import random
import sys
from pathlib import Path

from integration.tgi_harness import marked_prompt, routed

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "adapters"))
from tgi_client import require_text_generation


def test_text_generation_client_against_the_router() -> None:
    tg = require_text_generation()

    async def scenario() -> None:
        async with routed(num_blocks=256, block_size=16, max_input_tokens=300, max_total_tokens=500) as r:
            client = tg.AsyncClient(r.url, timeout=30)
            rng = random.Random(3)
            response = await client.generate(marked_prompt(60, 12, rng), max_new_tokens=40)
            assert response.details.generated_tokens == 12
            assert response.details.finish_reason.value == "eos_token"
            assert len(response.generated_text) == 11  # one byte a token; EOS is not text
            tokens = [t async for t in client.generate_stream(marked_prompt(50, 30, rng), max_new_tokens=9)]
            assert len(tokens) == 9 and all(t.token.id != 2 for t in tokens)
            assert tokens[-1].details is not None and tokens[-1].details.finish_reason.value == "length"
            assert tokens[-1].generated_text is not None and len(tokens[-1].generated_text) == 9
            try:
                await client.generate("x" * 400, max_new_tokens=5)
            except tg.errors.ValidationError as err:
                assert "must have less than 300 tokens" in str(err)
            else:
                raise AssertionError("a prompt over max_input_tokens was accepted")
            r.assert_clean()

    asyncio.run(scenario())


def test_openai_routes_and_metrics_against_the_router() -> None:
    async def scenario() -> None:
        async with routed(num_blocks=256, block_size=16, max_input_tokens=300, max_total_tokens=500) as r:
            rng = random.Random(4)
            body = {"model": "tgi", "prompt": marked_prompt(40, 6, rng), "max_tokens": 20, "stream": True}
            chunks = []
            async with r.session.post(r.url + "/v1/completions", json=body) as resp:
                assert resp.status == 200
                async for raw in resp.content:
                    line = raw.decode().strip()
                    if line.startswith("data:"):
                        chunks.append(line[5:].strip())
            assert chunks[-1] == "[DONE]"
            text = "".join(c["text"] for c in (json.loads(x)["choices"][0] for x in chunks[:-1]))
            assert len(text.removesuffix("</s>")) == 5  # TGI streams the EOS token's text too
            chat = {"model": "tgi", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 7}
            async with r.session.post(r.url + "/v1/chat/completions", json=chat) as resp:
                reply = await resp.json()
                assert resp.status == 200 and reply["usage"]["completion_tokens"] == 7
            async with r.session.get(r.url + "/metrics") as resp:
                metrics = await resp.text()
            for name in ("tgi_request_success", "tgi_batch_inference_count", "tgi_batch_max_total_tokens",
                         "ecosched_step_duration_seconds", "ecosched_kv_blocks_free"):
                assert name in metrics, name
            async with r.session.get(r.url + "/info") as resp:
                info = await resp.json()
                assert info["max_total_tokens"] == 500 and info["ecosched_policy"] == "ecoserve"
            r.assert_clean()

    asyncio.run(scenario())
