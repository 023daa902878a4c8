"""The starvation guard: skipping admission must not starve a large request under KV pressure."""

from __future__ import annotations

import pytest
from conftest import step

from ecosched import Prediction, RequestStatus
from policies.eco_helpers import eco, req


def _first_token_of_big(starvation_factor: float, horizon_s: float = 30.0) -> float | None:
    """24 blocks; small requests (4 blocks, about 0.2 s each) arrive every 0.1 s, so two or three always
    run; a big request needing 22 blocks arrives among them: free blocks never reach 22 unless
    admission stops letting small ones pass. Returns the big request's TTFT, or None."""
    s = eco(
        24,
        scheduler={"max_num_seqs": 16},
        time_synced=False,
        dynamic_budget=False,
        pipelining=False,
        starvation_factor=starvation_factor,
    )
    t, k = 0.0, 0
    while t < horizon_s:
        s.add_request(req(f"small-{k}", prompt=32, max_output=20, arrival=t), Prediction(20))
        if k == 3:
            s.add_request(req("big", prompt=340, max_output=8, arrival=t), Prediction(8))
        k += 1
        for _ in range(10):  # ten steps of 10 ms per 0.1 s
            step(s, t)
            t += 0.01
            big = s.requests.get("big")
            if big is not None and big.first_token_s is not None:
                return big.first_token_s - big.request.arrival_s
    assert s.get("big").status is RequestStatus.WAITING
    return None


def test_without_the_guard_small_requests_starve_a_big_one() -> None:
    assert _first_token_of_big(0.0) is None


@pytest.mark.parametrize("factor", [1.0, 2.0])
def test_the_guard_admits_it_soon_after_the_starvation_age(factor: float) -> None:
    ttft = 2.0  # the default interactive class
    served = _first_token_of_big(factor)
    assert served is not None
    # once past factor x TTFT nobody passes it, and the running small requests drain within 0.2 s
    assert factor * ttft < served < factor * ttft + 0.5
