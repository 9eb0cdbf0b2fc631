"""The scheduler's two-thread tests (tests/inference/test_scheduler.py has the rest): prefix
affinity between two slots, and the thread budget that never runs more model threads than cores.

A module of its own: its tests are marked cpu_exclusive (two ggml threads, run while the other
test workers wait), and tests/xdist_groups.py hands a module with such a test out last, whole. The
scheduler's other tests (one thread) then run in the suite's busy middle, not in its serial end.
"""

from __future__ import annotations

import pytest

from tests.inference.test_scheduler import make_model, params, prompt, tiny_path

__all__ = ["make_model", "tiny_path"]  # the fixtures, shared with test_scheduler.py


@pytest.mark.cpu_exclusive  # two ggml threads
def test_it_gives_a_job_to_the_slot_holding_its_prefix(make_model) -> None:
    model = make_model(slots=2, threads=2)
    a = prompt(model, "conversation A " * 10)
    b = prompt(model, "conversation B " * 10)
    p = params(model, max_tokens=2)
    model.scheduler.submit(a, p).wait(30)
    model.scheduler.submit(b, p).wait(30)
    holders = {tuple(s.ctx.tokens[: len(a) - 1]) == tuple(a[:-1]): s.index for s in model.scheduler.slots}
    assert True in holders
    result = model.scheduler.submit(a + b[-5:], p).wait(30)
    assert result.timings.cached_tokens >= len(a) - 1


@pytest.mark.cpu_exclusive  # two ggml threads
def test_it_never_runs_more_threads_than_cores(make_model) -> None:
    model = make_model(slots=3, threads=2)
    jobs = [
        model.scheduler.submit(prompt(model, f"job {i}"), params(model, max_tokens=40), user_key=str(i))
        for i in range(6)
    ]
    results = [j.wait(60) for j in jobs]
    assert all(r.reason == "length" for r in results)
    assert model.scheduler.budget.peak <= 2
    assert model.scheduler.budget.in_use == 0
