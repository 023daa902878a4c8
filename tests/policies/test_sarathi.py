"""`sarathi` (Sarathi-Serve): a fixed token budget from policies.sarathi.token_budget caps every step,
ongoing decodes go first and prefill chunks fill the rest, a prompt's blocks are taken whole at
admission."""

from __future__ import annotations

from conftest import make_request, make_scheduler, step

from ecosched import Admission, PrefillChunk, Scheduler

BS = 16


def blocks(tokens: int) -> int:
    return -(-tokens // BS)


def sarathi(budget: int, num_gpu_blocks: int = 64) -> Scheduler:
    return make_scheduler(
        "sarathi",
        cache={"block_size": BS, "num_gpu_blocks": num_gpu_blocks, "num_cpu_blocks": 0, "max_model_len": 1024},
        scheduler={"max_num_batched_tokens": 2048},  # not sarathi's budget: its own fixed one applies
        policies={"sarathi": {"token_budget": budget}},
    )


def test_fixed_budget_caps_each_step_and_chunks_long_prompts() -> None:
    budget, prompt = 64, 200
    s = sarathi(budget)
    s.add_request(make_request("a", prompt=prompt))
    start = 0
    while start < prompt:
        d, _ = step(s)
        n = min(budget, prompt - start)
        assert d.token_budget == budget
        assert d.prefills == (PrefillChunk("a", start, n, start + n == prompt),)
        start += n


def test_decodes_go_first_then_prefill_chunks_fill_the_rest() -> None:
    budget = 64
    s = sarathi(budget)
    s.add_request(make_request("d1", prompt=16, arrival=0.0))
    s.add_request(make_request("d2", prompt=16, arrival=0.1))
    step(s)
    s.add_request(make_request("p", prompt=300, arrival=1.0))

    d, _ = step(s, 1.0)

    assert d.decodes == ("d1", "d2")
    assert d.prefills == (PrefillChunk("p", 0, budget - 2, False),)
    assert d.num_scheduled_tokens == budget


def test_admission_allocates_the_whole_prompt_at_once() -> None:
    budget, prompt = 64, 200
    s = sarathi(budget)
    s.add_request(make_request("a", prompt=prompt))

    d, _ = step(s)

    assert d.admitted == (Admission("a", blocks(prompt)),)
    view = s.ledger.view("a")
    assert view.owned == blocks(prompt)
    assert view.used == blocks(budget)  # the first chunk is in KV; the rest of the prompt is held
    assert view.reserved_unused == blocks(prompt) - blocks(budget)
    d, _ = step(s)  # later chunks need no new blocks
    assert s.ledger.view("a").owned == blocks(prompt)


def test_prompt_whose_blocks_do_not_fit_waits_even_if_its_first_chunk_would() -> None:
    budget = 64
    first, prompt = 60, 80
    s = sarathi(budget, num_gpu_blocks=blocks(first + 1) + blocks(budget - 1))
    s.add_request(make_request("first", prompt=first, max_output=4))
    step(s)
    s.add_request(make_request("next", prompt=prompt, max_output=4, arrival=1.0))
    d, _ = step(s, 1.0)
    assert d.decodes == ("first",)
    free = s.ledger.num_admittable_blocks
    assert blocks(prompt) > free >= blocks(budget - 1)  # the whole prompt does not fit; one chunk would
    assert d.admitted == ()
    assert d.prefills == ()
