"""The token loop of one job in one slot: prefill in chunks, then sample and stream token by token."""

from __future__ import annotations

import time
from collections.abc import Collection

from inference.constraints import ConstraintError, TokenMask
from inference.engine import EngineContext, EngineError
from inference.jobs import Delta, Finished, FinishReason, Job, Started, Timings, Usage
from inference.sampling import Sampler, StopMatcher, TokenLogprob
from inference.threads import CoreBudget
from inference.tokenizer import IncrementalDecoder, Tokenizer


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


# Fixed for seeded requests (whatever CHAT_PREFILL_CHUNK is): a multiple of the 32-position SIMD
# block, so that the same prompt is always batched the same way.
SEEDED_PREFILL_CHUNK = 64


class _Cancelled(Exception):
    pass


def _eval(ctx: EngineContext, ids: list[int], budget: CoreBudget, batch_size: int) -> None:
    threads = budget.acquire()
    try:
        ctx.eval(ids, threads=threads, batch_size=batch_size)
    finally:
        budget.release(threads)


def run_job(
    job: Job,
    ctx: EngineContext,
    *,
    budget: CoreBudget,
    tokenizer: Tokenizer,
    stop_ids: Collection[int],
    prefill_chunk: int,
) -> Finished:
    """Run ``job`` to its end in ``ctx`` and return (and emit) its ``Finished`` event."""
    start = job.started_at = time.monotonic()
    prompt = job.prompt_ids
    # Reuse the cached prefix (at least the last prompt token is evaluated: its logits give the
    # first token). The rest is evaluated in chunks of prefill_chunk, the last token with the last
    # chunk: evaluating it on its own would cost a whole extra pass through the model before the
    # first token (about one decode step).
    cached = common_prefix(ctx.tokens, prompt[:-1])
    if job.params.seed is not None:
        # A seeded reply must not depend on what the slot's cache holds. ggml's results for a token
        # depend on how the tokens were batched (the attention sums run in SIMD blocks of 32
        # positions plus a scalar tail that depends on the batch's end: measured up to 3.8 apart in
        # one logit), so a prefix cached by another request, or by generation one token at a time,
        # is not bit-identical to a fresh prefill. A seeded request therefore always evaluates its
        # whole prompt from position 0 in SEEDED_PREFILL_CHUNK chunks (the same batches for the same
        # prompt, whatever the slot held): the cost is the prompt's prefill (no cache reuse) for
        # seeded requests only. The thread count does not matter (ggml splits rows across threads;
        # measured bit-identical with 1 and 2), so the core budget still shares the threads.
        cached = 0
        prefill_chunk = SEEDED_PREFILL_CHUNK
    ctx.truncate(cached)
    job.cached_tokens = cached
    job.emit(Started(cached_tokens=cached))

    generated: list[int] = []
    emitted: list[str] = []
    pending_ids: list[int] = []
    pending_logprobs: list[TokenLogprob] = []
    top_logprobs = job.params.logprobs
    reason: FinishReason = "stop"
    error: str | None = None
    cut_by_stop = False
    first_token_at: float | None = None
    prefill_done = start
    try:
        rest = prompt[cached:]
        for i in range(0, len(rest), prefill_chunk):
            if job.cancelled:
                raise _Cancelled
            _eval(ctx, rest[i : i + prefill_chunk], budget, prefill_chunk)
        if job.cancelled:
            raise _Cancelled
        prefill_done = job.prefill_done_at = time.monotonic()

        vocab_size = len(ctx.logits())
        grammar = job.params.grammar
        mask = TokenMask(grammar, tokenizer, vocab_size) if grammar else None
        sampler = Sampler(job.params, vocab_size, seed_offset=job.seed_offset, mask=mask)
        decoder = IncrementalDecoder(tokenizer)
        stopper = StopMatcher(job.params.stop)
        while True:
            if job.cancelled:
                raise _Cancelled
            token = sampler.sample(ctx.logits())
            if first_token_at is None:
                first_token_at = job.first_token_at = time.monotonic()
            if token in stop_ids:
                break
            generated.append(token)
            if top_logprobs is not None:  # before accept: the mask is still this step's
                pending_logprobs.append(sampler.logprobs(ctx.logits(), token, top_logprobs))
            sampler.accept(token)
            pending_ids.append(token)
            # A NUL byte is valid model output but no use in chat text (and PostgreSQL rejects it).
            text, stopped = stopper.push(decoder.push(token).replace("\x00", "\ufffd"))
            if text:
                if not emitted:
                    job.first_delta_at = time.monotonic()
                emitted.append(text)
                job.emit(Delta(text, tuple(pending_ids), tuple(pending_logprobs)))
                pending_ids, pending_logprobs = [], []
            if stopped:
                cut_by_stop = True
                break
            if len(generated) >= job.max_tokens:
                reason = "length"
                break
            if job.cancelled:
                raise _Cancelled
            _eval(ctx, [token], budget, 1)
    except _Cancelled:
        reason = "cancelled"
    except EngineError as exc:
        reason, error = "error", str(exc)
        ctx.truncate(0)  # the cache's state is unknown after a failed evaluation
    except ConstraintError as exc:  # checked when the request came: only a bug gets here
        reason, error = "error", f"the grammar failed: {exc}"

    if not cut_by_stop and reason != "error":
        tail = (
            stopper.push(decoder.flush().replace("\x00", "\ufffd"))[0] + stopper.flush() if generated else ""
        )
        if tail:
            emitted.append(tail)
            job.emit(Delta(tail, tuple(pending_ids), tuple(pending_logprobs)))
    end = time.monotonic()
    decode_time = end - first_token_at if first_token_at is not None else 0.0
    finished = Finished(
        reason=reason,
        usage=Usage(prompt_tokens=len(prompt), completion_tokens=len(generated)),
        timings=Timings(
            queue_wait=start - job.submitted_at,
            ttft=(first_token_at - job.submitted_at) if first_token_at is not None else None,
            prefill=prefill_done - start,
            duration=end - job.submitted_at,
            cached_tokens=cached,
            evaluated_tokens=len(prompt) - cached,
            decode_tokens_per_second=(len(generated) - 1) / decode_time
            if len(generated) > 1 and decode_time > 0
            else None,
        ),
        text="".join(emitted),
        token_ids=None if cut_by_stop else tuple(generated),
        error=error,
    )
    job.emit(finished)
    return finished
