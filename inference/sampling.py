"""Choose the next token from the engine's logits, and cut the text at stop strings.

``Sampler.sample`` reads the engine's logits through a zero-copy float32 view and never writes to
it. Its cost at 49,152 logits (measured with ``python -m bench.sampler``): tens of microseconds greedy, a few
hundred with temperature, with or without top_p. Sampling is exact up to float32 rounding: the
softmax covers the whole vocabulary (sums in float64), and top_p finds the exact nucleus by bucketing
the tokens by log-probability, so only the tokens of the bucket where the mass crosses top_p are
sorted (the worst case, most of the vocabulary within 1/16 nat of each other but not equal,
sorts it all: about 1.5 ms). Tokens tied at the nucleus boundary are all kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from inference.constraints import TokenMask

MAX_STOP_STRINGS = 4
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_BLOCK = 256  # tokens per block when drawing from the cumulative distribution
_BUCKETS_PER_NAT = 16  # top_p buckets: a bucket spans a factor e**(1/16) ~ 1.065 in probability
_N_BUCKETS = 4096  # reaches 256 nats below the top token; float32 exp underflows at about 104


class SamplingError(ValueError):
    """A sampling parameter is out of range; ``param`` is its OpenAI request field name."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _check_range(param: str, value: object, low: float, high: float, *, low_open: bool = False) -> None:
    above_low = _is_number(value) and (value > low if low_open else value >= low)  # type: ignore[operator]
    if not (above_low and value <= high):  # type: ignore[operator]
        bracket = "(" if low_open else "["
        raise SamplingError(param, f"{param} must be a number in {bracket}{low:g}, {high:g}], got {value!r}")


@dataclass(frozen=True)
class SamplingParams:
    """The OpenAI sampling fields of one completion. ``temperature=0`` means greedy.

    ``logit_bias`` may be given as a mapping (keys may be digit strings, as in JSON); it is stored
    as a tuple of ``(token_id, bias)`` pairs sorted by id, so the parameters stay hashable: read it
    with ``dict(params.logit_bias)``. ``stop`` may be given as one string or a list.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Mapping[int, float] | tuple[tuple[int, float], ...] = ()
    seed: int | None = None
    stop: tuple[str, ...] = ()
    max_tokens: int | None = None
    # An llguidance grammar (inference/constraints.py) the reply must match; None: free text.
    grammar: str | None = None
    # Log-probabilities of each token and of this many alternatives (0-20); None: not computed.
    logprobs: int | None = None

    def __post_init__(self) -> None:
        pairs = self.logit_bias.items() if isinstance(self.logit_bias, Mapping) else self.logit_bias
        try:
            bias = tuple(sorted((int(key), value) for key, value in pairs))
        except (TypeError, ValueError) as exc:
            raise SamplingError("logit_bias", "logit_bias keys must be token ids (integers)") from exc
        object.__setattr__(self, "logit_bias", bias)
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        object.__setattr__(self, "stop", stop)

    def to_json(self, *, exclude: Sequence[str] = ()) -> dict[str, Any]:
        """The parameters as JSON values (``logit_bias`` as ``{"token id": bias}``, ``stop`` as a
        list): what the inference worker protocol sends and what the API's log records.
        ``from_json`` reads it back."""
        out: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "logit_bias": {str(k): v for k, v in dict(self.logit_bias).items()},
            "seed": self.seed,
            "stop": list(self.stop),
            "max_tokens": self.max_tokens,
            "grammar": self.grammar,
            "logprobs": self.logprobs,
        }
        for name in exclude:
            del out[name]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SamplingParams:
        return cls(**data)

    def validate(self, vocab_size: int) -> None:
        """Raise ``SamplingError`` naming the first field that is out of range."""
        _check_range("temperature", self.temperature, 0.0, 2.0)
        _check_range("top_p", self.top_p, 0.0, 1.0, low_open=True)
        _check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        for token_id, bias in self.logit_bias:  # type: ignore[misc]
            if not 0 <= token_id < vocab_size:
                raise SamplingError("logit_bias", f"logit_bias token id {token_id} is not in the vocabulary")
            _check_range("logit_bias", bias, -100.0, 100.0)
        if self.seed is not None and not (
            isinstance(self.seed, int)
            and not isinstance(self.seed, bool)
            and _INT64_MIN <= self.seed <= _INT64_MAX
        ):
            raise SamplingError("seed", f"seed must be a 64-bit integer, got {self.seed!r}")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise SamplingError("stop", f"at most {MAX_STOP_STRINGS} stop sequences are allowed")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise SamplingError("stop", "stop sequences must be non-empty strings")
        if self.max_tokens is not None and not (
            isinstance(self.max_tokens, int)
            and not isinstance(self.max_tokens, bool)
            and self.max_tokens >= 1
        ):
            raise SamplingError("max_tokens", f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if self.grammar is not None and not (isinstance(self.grammar, str) and self.grammar):
            raise SamplingError("response_format", "the grammar must be a non-empty string")
        top = self.logprobs
        if top is not None and not (isinstance(top, int) and not isinstance(top, bool) and 0 <= top <= 20):
            raise SamplingError("top_logprobs", f"top_logprobs must be an integer in [0, 20], got {top!r}")


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability and its most likely alternatives (id, logprob)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def _make_rng(seed: int | None, seed_offset: int) -> np.random.Generator:
    # Not PCG64(seed + offset): choice 1 of seed 5 would then repeat choice 0 of seed 6, and
    # negative seeds would fail. A spawn key gives each choice its own independent stream.
    if seed is None:
        return np.random.default_rng()
    return np.random.Generator(
        np.random.PCG64(np.random.SeedSequence(seed % 2**64, spawn_key=(seed_offset,)))
    )


class Sampler:
    """Draws the tokens of one completion (one choice); not safe to share between threads.

    For ``n > 1`` choices from one seed, give each choice its own ``seed_offset``: the choices are
    then independent of each other, and each is reproducible.
    """

    def __init__(
        self,
        params: SamplingParams,
        vocab_size: int,
        *,
        seed_offset: int = 0,
        mask: TokenMask | None = None,
    ) -> None:
        params.validate(vocab_size)
        self.params = params
        self.mask = mask  # the grammar's token mask (constrained decoding), or None
        self.vocab_size = vocab_size
        self._rng = _make_rng(params.seed, seed_offset)
        self._counts: dict[int, int] = {}
        self._penalty: tuple[np.ndarray, np.ndarray] | None = None  # (ids, amounts), rebuilt lazily
        self._penalize = params.presence_penalty != 0 or params.frequency_penalty != 0
        bias = dict(params.logit_bias)  # type: ignore[arg-type]
        self._bias_ids = np.array([i for i, b in bias.items() if b > -100], dtype=np.intp)
        self._bias_values = np.array([b for b in bias.values() if b > -100], dtype=np.float32)
        self._ban_ids = np.array([i for i, b in bias.items() if b <= -100], dtype=np.intp)
        self._force_ids = np.array([i for i, b in bias.items() if b >= 100], dtype=np.intp)
        self._z = np.empty(vocab_size, dtype=np.float32)
        self._p = np.empty(vocab_size, dtype=np.float32)
        self._buckets = np.empty(vocab_size, dtype=np.intp)
        self._block_starts = np.arange(0, vocab_size, _BLOCK)

    def accept(self, token_id: int) -> None:
        """Record a generated token, for the presence and frequency penalties."""
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} is not in the vocabulary")
        self._counts[token_id] = self._counts.get(token_id, 0) + 1
        self._penalty = None
        if self.mask is not None:
            self.mask.consume(token_id)

    def sample(self, logits: np.ndarray) -> int:
        """Return the next token id. ``logits`` is only read, never modified."""
        if self.params.temperature == 0:
            if not self._adjusts():
                self._check_shape(logits)
                return int(np.argmax(logits))
            return int(np.argmax(self._adjust(logits, self._z)))
        return self._draw(self._weights(logits))

    def adjusted_logits(self, logits: np.ndarray) -> np.ndarray:
        """A float32 copy of ``logits`` after penalties and logit_bias: what temperature and top_p
        then apply to. Banned tokens are -inf; when tokens are forced (bias +100), so are all others."""
        return self._adjust(logits, np.empty(self.vocab_size, dtype=np.float32))

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """The distribution ``sample`` draws from (after temperature and top_p), as float64."""
        if self.params.temperature == 0:
            probs = np.zeros(self.vocab_size)
            probs[int(np.argmax(self.adjusted_logits(logits)))] = 1.0
            return probs
        weights = self._weights(logits).astype(np.float64)
        return weights / weights.sum()

    def logprobs(self, logits: np.ndarray, token_id: int, top: int) -> TokenLogprob:
        """The log-probability of ``token_id`` and of the ``top`` most likely tokens, from the
        logits after penalties, logit_bias and the grammar's mask, before temperature and top_p
        (at temperature 0 the draw's own distribution would be a useless 0 / -inf). Tokens the
        mask or a -100 bias excludes (-inf) are never listed. Call it before ``accept``."""
        adjusted = self.adjusted_logits(logits).astype(np.float64)
        adjusted -= adjusted.max()
        log_total = float(np.log(np.exp(adjusted).sum()))
        alternatives: tuple[tuple[int, float], ...] = ()
        if top:
            k = min(top, self.vocab_size)
            ids = np.argpartition(-adjusted, k - 1)[:k]
            ids = ids[np.argsort(-adjusted[ids], kind="stable")]
            alternatives = tuple(
                (int(i), float(adjusted[i]) - log_total) for i in ids if adjusted[i] != -np.inf
            )
        return TokenLogprob(int(token_id), float(adjusted[token_id]) - log_total, alternatives)

    # -- internals ---------------------------------------------------------------------------

    def _check_shape(self, logits: np.ndarray) -> None:
        if logits.shape != (self.vocab_size,):
            raise ValueError(f"expected logits of shape ({self.vocab_size},), got {logits.shape}")

    def _adjusts(self) -> bool:
        return bool(
            self.mask is not None
            or self._bias_ids.size
            or self._ban_ids.size
            or (self._penalize and self._counts)
        )

    def _adjust(self, logits: np.ndarray, out: np.ndarray) -> np.ndarray:
        self._check_shape(logits)
        np.copyto(out, logits, casting="same_kind")
        if self._penalize and self._counts:
            ids, amounts = self._penalty_arrays()
            out[ids] -= amounts
        if self._bias_ids.size:
            out[self._bias_ids] += self._bias_values
        if self._ban_ids.size:
            out[self._ban_ids] = -np.inf
        if self._force_ids.size:
            forced = out[self._force_ids]
            out.fill(-np.inf)
            out[self._force_ids] = forced
        if self.mask is not None:
            self._apply_mask(logits, out)
        return out

    def _apply_mask(self, logits: np.ndarray, out: np.ndarray) -> None:
        """The grammar's mask, last: a token the grammar refuses is -inf whatever its bias. When
        the bias forced only refused tokens, the grammar wins (the bias is dropped for this step)."""
        banned = self.mask.banned()  # type: ignore[union-attr]
        np.copyto(out, -np.inf, where=banned)
        if self._force_ids.size and out.max() == -np.inf:
            np.copyto(out, logits, casting="same_kind")
            np.copyto(out, -np.inf, where=banned)

    def _penalty_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        # OpenAI: mu[j] -= c[j] * frequency_penalty + (c[j] > 0) * presence_penalty.
        if self._penalty is None:
            ids = np.fromiter(self._counts.keys(), dtype=np.intp, count=len(self._counts))
            counts = np.fromiter(self._counts.values(), dtype=np.float64, count=len(self._counts))
            amounts = counts * self.params.frequency_penalty + self.params.presence_penalty
            self._penalty = (ids, amounts.astype(np.float32))
        return self._penalty

    def _weights(self, logits: np.ndarray) -> np.ndarray:
        """Unnormalised probabilities after temperature and top_p, in ``self._p`` (zero = excluded)."""
        if self._adjusts():
            source = self._adjust(logits, self._z)
        else:
            self._check_shape(logits)
            source = logits
        top = source.max()
        if top == -np.inf:
            raise SamplingError("logit_bias", "logit_bias bans every token that could be chosen")
        if not np.isfinite(top):
            raise ValueError("logits contain NaN or +inf")
        z, p = self._z, self._p
        np.subtract(source, top, out=z, casting="same_kind")
        np.multiply(z, np.float32(1.0 / self.params.temperature), out=z)
        np.exp(z, out=p)  # the top token has weight exactly 1.0
        if self.params.top_p < 1.0:
            threshold = self._nucleus_threshold(z, p, self.params.top_p)
            np.multiply(p, p >= threshold, out=p)
        return p

    def _nucleus_threshold(self, z: np.ndarray, p: np.ndarray, top_p: float) -> float:
        """The smallest weight the nucleus keeps: the top tokens, in order, up to the first one at
        which their mass reaches ``top_p`` of the total. Overwrites ``z``."""
        total = float(p.sum(dtype=np.float64))
        target = top_p * total
        if target <= 1.0:  # the top token alone is enough
            return 1.0
        # Bucket by log-weight (z <= 0), add up each bucket's mass, and sort only the crossing bucket.
        np.multiply(z, np.float32(-_BUCKETS_PER_NAT), out=z)
        np.minimum(z, np.float32(_N_BUCKETS - 1), out=z)
        np.copyto(self._buckets, z, casting="unsafe")  # truncation is floor, as z >= 0 here
        cumulative = np.cumsum(np.bincount(self._buckets, weights=p, minlength=_N_BUCKETS))
        bucket = min(int(np.searchsorted(cumulative, target)), _N_BUCKETS - 1)
        before = float(cumulative[bucket - 1]) if bucket else 0.0
        members = p[self._buckets == bucket]
        if members.size == 0:  # rounding left the crossing past the last non-empty bucket
            return float(p[p > 0].min())
        if members.min() == members.max():  # one value (e.g. equal logits): all tied, all kept
            return float(members[0])
        members = np.sort(members)[::-1]
        running = np.cumsum(members, dtype=np.float64)
        k = min(int(np.searchsorted(running, target - before)), members.size - 1)
        return float(members[k])

    def _draw(self, weights: np.ndarray) -> int:
        """Draw an index with probability proportional to ``weights``, never one of weight 0.

        A two-level inverse CDF in float64: block sums first, then a running sum within one block,
        which avoids a float64 cumulative sum over the whole vocabulary (about 0.75 ms).
        """
        cumulative = np.cumsum(np.add.reduceat(weights, self._block_starts, dtype=np.float64))
        u = self._rng.random() * cumulative[-1]
        block = min(int(np.searchsorted(cumulative, u, side="right")), cumulative.size - 1)
        start = block * _BLOCK
        before = float(cumulative[block - 1]) if block else 0.0
        running = np.cumsum(weights[start : start + _BLOCK], dtype=np.float64)
        index = start + min(int(np.searchsorted(running, u - before, side="right")), running.size - 1)
        if weights[index] <= 0:  # only reachable through rounding at a block's end
            earlier = np.flatnonzero(weights[:index])
            index = int(earlier[-1]) if earlier.size else int(np.flatnonzero(weights)[0])
        return index


class StopMatcher:
    """Cuts streamed text at the first stop string, which may span several pieces.

    ``push`` returns the text that is safe to show now: a tail that could still grow into a stop
    string is held back until it completes one (then it is dropped, with everything after it) or
    stops matching (then it is released). The stop string that completes first wins; among stops
    that complete at the same character, the one starting earliest.
    """

    def __init__(self, stop: Sequence[str]) -> None:
        if isinstance(stop, str):
            stop = (stop,)
        if not all(isinstance(s, str) and s for s in stop):
            raise ValueError("stop strings must be non-empty")
        self.stop = tuple(stop)
        self.stopped = False
        self._held = ""
        self._parts: list[str] = []
        self._longest = max((len(s) for s in self.stop), default=0)

    @property
    def text(self) -> str:
        """All the text emitted so far."""
        return "".join(self._parts)

    def push(self, piece: str) -> tuple[str, bool]:
        """Add a piece of text; return (text to emit now, whether a stop string was completed)."""
        if self.stopped:
            return "", True
        pending = self._held + piece
        cut = self._first_stop(pending)
        if cut is not None:
            emit, self._held, self.stopped = pending[:cut], "", True
        else:
            keep = self._partial_tail(pending)
            emit, self._held = pending[: len(pending) - keep], pending[len(pending) - keep :]
        if emit:
            self._parts.append(emit)
        return emit, self.stopped

    def flush(self) -> str:
        """At the end of generation, release the held-back tail (nothing after a stop)."""
        emit, self._held = ("" if self.stopped else self._held), ""
        if emit:
            self._parts.append(emit)
        return emit

    def _first_stop(self, text: str) -> int | None:
        best: tuple[int, int] | None = None  # (end, start)
        for s in self.stop:
            start = text.find(s)
            if start >= 0 and (best is None or (start + len(s), start) < best):
                best = (start + len(s), start)
        return None if best is None else best[1]

    def _partial_tail(self, text: str) -> int:
        """Length of the longest tail of ``text`` that is a proper prefix of some stop string."""
        for size in range(min(len(text), self._longest - 1), 0, -1):
            tail = text[-size:]
            if any(s.startswith(tail) for s in self.stop):
                return size
        return 0
