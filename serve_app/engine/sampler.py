"""Sampler: turns rank 0's logits into next tokens, one row per sampling sequence.

Order: penalties -> min_tokens stop masking -> greedy argmax, or temperature -> top-k /
top-p / min-p truncation -> a draw by the exponential race (argmax of p / E, E ~ Exp(1)),
which equals a categorical draw. A seeded row draws its noise from a generator seeded by
(seed, output position) alone, so its tokens never depend on its batch neighbours.
Logprobs are the model's own log-probabilities (before penalties and temperature).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from serve_app.engine.sampling_params import SamplingParams
from serve_app.engine.sequence import TokenLogprobs

_SEED_MIX = 0x9E3779B97F4A7C15
RowArgmax = Callable[[torch.Tensor], torch.Tensor]
ROW_ARGMAX: RowArgmax = functools.partial(torch.argmax, dim=-1)


@dataclass(slots=True)
class SamplingRow:
    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    stop_token_ids: list[int]  # eos (unless ignore_eos) + the request's stop_token_ids


def seeded_noise_seed(seed: int, output_position: int) -> int:
    return (seed * 1_000_003 + (output_position + 1) * _SEED_MIX) % (2**63)


def apply_penalties(logits: torch.Tensor, row: SamplingRow) -> None:
    """In place on one row (vocab,). Repetition: HF semantics over prompt + output.
    Presence/frequency: OpenAI semantics over the output."""
    params = row.params
    if params.repetition_penalty != 1.0:
        seen = torch.tensor(
            sorted(set(row.prompt_token_ids + row.output_token_ids)),
            dtype=torch.long,
            device=logits.device,
        )
        if seen.numel():
            values = logits[seen]
            logits[seen] = torch.where(
                values > 0, values / params.repetition_penalty, values * params.repetition_penalty
            )
    if row.output_token_ids and (params.presence_penalty or params.frequency_penalty):
        counts = torch.bincount(
            torch.tensor(row.output_token_ids, dtype=torch.long, device=logits.device),
            minlength=logits.shape[0],
        ).to(logits.dtype)
        logits -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0)


def truncate_probs(probs: torch.Tensor, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    """Zero the probabilities outside the top-k / top-p nucleus / min-p floor; (vocab,)."""
    if min_p > 0.0:
        probs = torch.where(probs >= min_p * probs.max(), probs, 0.0)
    if top_k > 0 or top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = torch.ones_like(sorted_probs, dtype=torch.bool)
        if top_k > 0:
            keep[top_k:] = False
        if top_p < 1.0:
            mass_before = sorted_probs.cumsum(0) - sorted_probs
            keep &= mass_before < top_p * sorted_probs.sum()
        keep[0] = True
        kept = torch.zeros_like(keep)
        kept[order] = keep
        probs = torch.where(kept, probs, 0.0)
    return probs


class Sampler:
    def __init__(self, seed: int, device: torch.device, argmax: RowArgmax = ROW_ARGMAX) -> None:
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.argmax = argmax  # (rows, vocab) -> (rows,) int64; the engine's is fast_paths.py's

    @torch.inference_mode()
    def sample(
        self, logits: torch.Tensor, rows: list[SamplingRow]
    ) -> tuple[list[int], list[TokenLogprobs | None]]:
        """logits (num_rows, vocab) float32 -> one token per row, and logprobs where asked."""
        want_logprobs = any(row.params.logprobs is not None for row in rows)
        model_logprobs = torch.log_softmax(logits, dim=-1) if want_logprobs else None
        adjusted = [
            index
            for index, row in enumerate(rows)
            if row.params.needs_penalties
            or (row.stop_token_ids and len(row.output_token_ids) < row.params.min_tokens)
        ]
        if adjusted:
            logits = logits.clone()  # the caller's logits stay as the model produced them
        for index in adjusted:
            row = rows[index]
            if row.params.needs_penalties:
                apply_penalties(logits[index], row)
            if row.stop_token_ids and len(row.output_token_ids) < row.params.min_tokens:
                logits[index, row.stop_token_ids] = float("-inf")

        tokens = self.argmax(logits)
        random_rows = [i for i, row in enumerate(rows) if not row.params.is_greedy]
        if random_rows:
            self._sample_random_rows(logits, rows, random_rows, tokens)
        token_list = tokens.tolist()
        logprob_list = [
            _token_logprobs(model_logprobs[i], token_list[i], row.params.logprobs)
            if model_logprobs is not None and row.params.logprobs is not None
            else None
            for i, row in enumerate(rows)
        ]
        return token_list, logprob_list

    def _sample_random_rows(
        self,
        logits: torch.Tensor,
        rows: list[SamplingRow],
        indices: list[int],
        tokens: torch.Tensor,
    ) -> None:
        temperatures = torch.tensor(
            [rows[i].params.temperature for i in indices], device=logits.device, dtype=logits.dtype
        )
        probs = torch.softmax(logits[indices] / temperatures[:, None], dim=-1)
        noise = torch.empty_like(probs)
        unseeded = [n for n, i in enumerate(indices) if rows[i].params.seed is None]
        if unseeded:
            noise[unseeded] = exponential_noise(
                (len(unseeded), probs.shape[1]), probs.device, self.generator
            )
        for n, i in enumerate(indices):
            params = rows[i].params
            if params.seed is not None:
                seeded = torch.Generator(device=probs.device).manual_seed(
                    seeded_noise_seed(params.seed, len(rows[i].output_token_ids))
                )
                noise[n] = exponential_noise((probs.shape[1],), probs.device, seeded)
            if params.top_k or params.top_p < 1.0 or params.min_p:
                probs[n] = truncate_probs(probs[n], params.top_k, params.top_p, params.min_p)
        tokens[indices] = self.argmax(probs / noise)


def exponential_noise(
    shape: tuple[int, ...], device: torch.device, generator: torch.Generator
) -> torch.Tensor:
    """Exp(1) samples as -log(U), U uniform: on CPU `Tensor.exponential_` draws one value at a
    time on one thread, several times slower (bench/README.md, "Numbers behind the engine's
    code comments")."""
    return torch.rand(shape, device=device, generator=generator).log_().neg_()


def _token_logprobs(logprobs: torch.Tensor, token_id: int, num_top: int) -> TokenLogprobs:
    top: dict[int, float] = {}
    if num_top:
        values, ids = logprobs.topk(num_top)
        top = dict(zip(ids.tolist(), values.tolist(), strict=True))
    return TokenLogprobs(token_id=token_id, logprob=float(logprobs[token_id]), top=top)
