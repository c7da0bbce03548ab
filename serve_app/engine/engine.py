"""LLMEngine: add_request / step / abort over the scheduler, executor and sampler.

One step reads as four lines: schedule, run the model, postprocess (advance the sequences,
sample), collect what finished.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field, replace

import torch

from serve_app.engine.block_manager import BlockManager
from serve_app.engine.config import EngineConfig
from serve_app.engine.model_files import eos_token_ids
from serve_app.engine.model_input import build_model_input
from serve_app.engine.model_path import resolve_model_dir
from serve_app.engine.parallel.executor import Executor, make_executor
from serve_app.engine.request_output import RequestOutput
from serve_app.engine.sampler import Sampler, SamplingRow
from serve_app.engine.sampling_params import SamplingParams
from serve_app.engine.scheduler import ScheduledChunk, Scheduler, SchedulerLimits
from serve_app.engine.sequence import Sequence


class RequestError(ValueError):
    """A request is invalid; the message names the field and the allowed range."""


@dataclass(slots=True)
class StepTotals:
    """What the engine's steps did since start: for step-time and batch-size metrics."""

    num_steps: int = 0
    step_time_s: float = 0.0
    num_scheduled_tokens: int = 0
    num_scheduled_seqs: int = 0

    def add(self, chunks: list[ScheduledChunk], seconds: float) -> None:
        self.num_steps += 1
        self.step_time_s += seconds
        self.num_scheduled_tokens += sum(chunk.num_new_tokens for chunk in chunks)
        self.num_scheduled_seqs += len(chunks)


@dataclass(slots=True)
class EngineStats:
    num_running: int
    num_waiting: int
    num_kv_blocks: int
    num_used_kv_blocks: int
    kv_cache_usage: float
    prefix_cache_hit_rate: float
    num_preemptions: int
    # Running totals since start (exported as Prometheus counters).
    prefix_cache_query_tokens: int = 0
    prefix_cache_hit_tokens: int = 0
    steps: StepTotals = field(default_factory=StepTotals)


class LLMEngine:
    def __init__(self, config: EngineConfig, executor: Executor | None = None) -> None:
        self.config = config
        self.model_dir = resolve_model_dir(config.model)
        self.executor = executor or make_executor(config, self.model_dir)
        self.max_model_len = self.executor.max_model_len
        self.vocab_size = self.executor.vocab_size
        self.eos_token_ids = eos_token_ids(self.model_dir)
        self.block_manager = BlockManager(
            self.executor.num_kv_blocks, config.block_size, config.enable_prefix_caching
        )
        if not config.enable_chunked_prefill and config.max_num_batched_tokens < self.max_model_len:
            raise RequestError(
                "EngineConfig.max_num_batched_tokens must be >= max_model_len "
                f"({self.max_model_len}) when enable_chunked_prefill is false"
            )
        self.scheduler = Scheduler(
            SchedulerLimits(
                config.max_num_seqs, config.max_num_batched_tokens, config.enable_chunked_prefill
            ),
            self.block_manager,
        )
        # The sampler runs beside rank 0, on its device.
        runner = self.executor.runner
        self.sampler = Sampler(config.seed, runner.device, runner.fast_paths.argmax)
        self.sequences: dict[str, Sequence] = {}
        self._arrivals = itertools.count()
        self.step_totals = StepTotals()

    # ---- requests ---------------------------------------------------------------------
    def add_request(
        self,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        request_id: str | None = None,
        output_token_ids: list[int] | None = None,
    ) -> str:
        """Queue a request. `output_token_ids`: tokens it already generated elsewhere (a
        failover resume): they count as output (max_tokens, min_tokens, penalties, seeded
        sampling's positions), are prefilled with the prompt and are not reported again."""
        arrival = next(self._arrivals)
        request_id = request_id if request_id is not None else f"req-{arrival}"
        resumed = list(output_token_ids or [])
        self.validate_request(prompt_token_ids, sampling_params, resumed)
        if request_id in self.sequences:
            raise RequestError(f"request_id {request_id!r} is already in use")
        seq = Sequence(request_id, list(prompt_token_ids), sampling_params, arrival)
        seq.output_token_ids = resumed
        seq.num_reported_tokens = len(resumed)
        self.sequences[request_id] = seq
        self.scheduler.add(seq)
        return request_id

    def validate_request(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        output_token_ids: list[int] | None = None,
    ) -> None:
        resumed = output_token_ids or []
        if not prompt_token_ids:
            raise RequestError("prompt must contain at least 1 token, got an empty prompt")
        if len(prompt_token_ids) + len(resumed) >= self.max_model_len:
            raise RequestError(
                f"prompt has {len(prompt_token_ids) + len(resumed)} tokens; it must be shorter "
                f"than max_model_len ({self.max_model_len})"
            )
        if len(resumed) >= params.max_tokens:
            raise RequestError(
                f"a resumed request has {len(resumed)} output tokens already; max_tokens "
                f"({params.max_tokens}) leaves none to generate"
            )
        bad = [t for t in prompt_token_ids + resumed if not 0 <= t < self.vocab_size]
        if bad:
            raise RequestError(f"prompt token ids must be in [0, {self.vocab_size}), got {bad[:5]}")
        if params.stop_token_ids and max(params.stop_token_ids) >= self.vocab_size:
            raise RequestError(f"stop_token_ids must be in [0, {self.vocab_size})")

    def abort(self, request_id: str) -> bool:
        seq = self.sequences.pop(request_id, None)
        if seq is None:
            return False
        self.scheduler.remove(seq)
        seq.finish_reason = "abort"
        return True

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.num_unfinished > 0

    # ---- the step ---------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        started_s = time.perf_counter()
        chunks = self.scheduler.schedule()
        if not chunks:
            return []
        logits = self.executor.execute(build_model_input(chunks, self.config.block_size))
        outputs = self._collect_outputs(self._postprocess(chunks, logits))
        self.step_totals.add(chunks, time.perf_counter() - started_s)
        return outputs

    def _postprocess(
        self, chunks: list[ScheduledChunk], logits: torch.Tensor | None
    ) -> list[ScheduledChunk]:
        """Advance every chunk's sequence, sample a token for those that end a prompt or decode."""
        sampling_chunks = [chunk for chunk in chunks if chunk.samples_token]
        for chunk in chunks:
            chunk.seq.num_computed_tokens += chunk.num_new_tokens
            self.block_manager.register_full_blocks(chunk.seq)
        if sampling_chunks:
            assert logits is not None and logits.shape[0] == len(sampling_chunks)
            rows = [self._sampling_row(chunk.seq) for chunk in sampling_chunks]
            token_ids, logprobs = self.sampler.sample(logits, rows)
            for chunk, token_id, token_logprobs in zip(
                sampling_chunks, token_ids, logprobs, strict=True
            ):
                self._append_token(chunk.seq, token_id, token_logprobs)
        return sampling_chunks

    def _sampling_row(self, seq: Sequence) -> SamplingRow:
        params = seq.sampling_params
        stop_ids = list(params.stop_token_ids)
        if not params.ignore_eos:
            stop_ids += self.eos_token_ids
        return SamplingRow(params, seq.prompt_token_ids, seq.output_token_ids, stop_ids)

    def _append_token(self, seq: Sequence, token_id: int, token_logprobs) -> None:
        params = seq.sampling_params
        seq.output_token_ids.append(token_id)
        if token_logprobs is not None:
            seq.output_logprobs.append(token_logprobs)
        is_stop = token_id in params.stop_token_ids or (
            not params.ignore_eos and token_id in self.eos_token_ids
        )
        if is_stop and seq.num_output_tokens >= params.min_tokens:
            seq.finish_reason = "stop"
        elif seq.num_output_tokens >= params.max_tokens or seq.num_tokens >= self.max_model_len:
            seq.finish_reason = "length"

    def _collect_outputs(self, chunks: list[ScheduledChunk]) -> list[RequestOutput]:
        outputs = []
        for chunk in chunks:
            seq = chunk.seq
            new_tokens = seq.output_token_ids[seq.num_reported_tokens :]
            # Logprobs exist for the tokens generated here (a resumed request has fewer).
            num_logprobs = len(seq.output_logprobs)
            new_logprobs = (
                seq.output_logprobs[num_logprobs - len(new_tokens) :] if new_tokens else []
            )
            seq.num_reported_tokens = seq.num_output_tokens
            finished = seq.finish_reason is not None
            if finished:
                self.scheduler.remove(seq)
                del self.sequences[seq.request_id]
            outputs.append(
                RequestOutput(
                    request_id=seq.request_id,
                    new_token_ids=new_tokens,
                    finished=finished,
                    finish_reason=seq.finish_reason,
                    num_prompt_tokens=seq.num_prompt_tokens,
                    num_output_tokens=seq.num_output_tokens,
                    num_cached_tokens=seq.num_cached_prompt_tokens,
                    new_logprobs=new_logprobs,
                )
            )
        return outputs

    # ---- conveniences -----------------------------------------------------------------
    def generate(
        self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]
    ) -> list[list[int]]:
        """Run prompts to completion (offline use and tests); output token ids per prompt."""
        params_list = params if isinstance(params, list) else [params] * len(prompts)
        ids = [self.add_request(p, sp) for p, sp in zip(prompts, params_list, strict=True)]
        results: dict[str, list[int]] = {request_id: [] for request_id in ids}
        while self.has_unfinished_requests():
            for output in self.step():
                if output.request_id in results:
                    results[output.request_id].extend(output.new_token_ids)
        return [results[request_id] for request_id in ids]

    def stats(self) -> EngineStats:
        bm = self.block_manager
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            num_kv_blocks=bm.num_blocks,
            num_used_kv_blocks=bm.num_used_blocks,
            kv_cache_usage=bm.usage,
            prefix_cache_hit_rate=bm.prefix_cache_hit_rate,
            num_preemptions=self.scheduler.num_preemptions,
            prefix_cache_query_tokens=bm.prefix_query_tokens,
            prefix_cache_hit_tokens=bm.prefix_hit_tokens,
            steps=replace(self.step_totals),
        )

    def shutdown(self) -> None:
        self.executor.shutdown()
