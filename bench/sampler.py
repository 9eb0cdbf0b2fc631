"""The sampler's cost per token: ``python -m bench.sampler`` prints microseconds per ``sample``
call on random logits at the default model's vocabulary size, by setting."""

from __future__ import annotations

import time

import numpy as np

from inference.sampling import Sampler, SamplingParams


def bench_sampler(vocab_size: int = 49_152, repeats: int = 200) -> dict[str, float]:
    """Microseconds per ``sample`` call on random float32 logits (standard normal), by setting."""
    logits = np.random.default_rng(0).standard_normal(vocab_size).astype(np.float32)
    settings = {
        "greedy": SamplingParams(temperature=0.0),
        "greedy+penalties+bias": SamplingParams(
            temperature=0.0, presence_penalty=0.5, frequency_penalty=0.5, logit_bias={5: -100.0, 7: 3.0}
        ),
        "temperature 1, top_p 1.0": SamplingParams(temperature=1.0, seed=0),
        "temperature 1, top_p 0.9": SamplingParams(temperature=1.0, top_p=0.9, seed=0),
        "temperature 0.7, top_p 0.9, x3 logits": SamplingParams(temperature=0.7, top_p=0.9, seed=0),
    }
    results: dict[str, float] = {}
    for name, params in settings.items():
        sampler = Sampler(params, vocab_size)
        source = logits * 3 if "x3" in name else logits
        for token in range(300):
            sampler.accept(token)
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(repeats):
                sampler.sample(source)
            best = min(best, (time.perf_counter() - started) / repeats)
        results[name] = best * 1e6
    return results


if __name__ == "__main__":
    for setting, micros in bench_sampler().items():
        print(f"{setting:40s} {micros:8.1f} us")
