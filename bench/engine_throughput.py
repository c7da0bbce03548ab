"""Offline throughput of the engine against transformers `generate`, and against the FLOP
ceiling of this machine. Prints a table; `make bench` runs it with the defaults.

Workload: 128 requests, prompts 16-256 tokens, outputs 16-128 tokens (ignore_eos), random
token ids, the `bench` preset (about 56M parameters), float32.
Systems: (a) transformers generate one request at a time, (b) transformers generate in
static left-padded batches of 16, (c) our engine with every request submitted at once.
Ceiling: the workload's matmul FLOPs (2 x non-embedding parameters per prompt and output
token, plus the LM head once per output token) over this machine's float32 matmul rate:
the fastest of torch's default GEMM (MKL) and oneDNN on a packed operand, measured in the
same run, before and after the systems (the highest rate, the strictest ceiling, is used).
`--rounds N` runs all of it N times in turn and ends with the median and range of each
ratio: the dev box's speed drifts by 10-20% between minutes, the baselines' more than the
engine's. Host memory comes in huge pages, as `make run` gives the serving processes: the
script re-runs itself with glibc's tunable where needed (`--no-huge-pages`: it does not).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass

import torch

from serve_app.engine.config import EngineConfig
from serve_app.engine.engine import LLMEngine
from serve_app.engine.host_memory import (
    HUGE_PAGE_TUNABLE,
    malloc_uses_huge_pages,
    transparent_huge_page_mode,
)
from serve_app.engine.layers.packed_linear import (
    onednn_packing_available,
    pack_weight,
    packed_linear,
)
from serve_app.engine.model_path import resolve_model_dir
from serve_app.engine.sampling_params import SamplingParams


@dataclass
class Workload:
    prompts: list[list[int]]
    output_lens: list[int]

    @property
    def num_output_tokens(self) -> int:
        return sum(self.output_lens)

    def subset(self, count: int) -> Workload:
        return Workload(self.prompts[:count], self.output_lens[:count])


@dataclass
class Result:
    system: str
    requests: int
    output_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds


def make_workload(num_requests: int, vocab: int, seed: int) -> Workload:
    rng = random.Random(seed)
    prompts = [
        [rng.randrange(3, vocab) for _ in range(rng.randint(16, 256))] for _ in range(num_requests)
    ]
    return Workload(prompts, [rng.randint(16, 128) for _ in range(num_requests)])


def measure_matmul_flops(seconds: float = 2.0, size: int = 1024) -> dict[str, float]:
    """float32 FLOP/s of a size x size matmul through each GEMM torch has here: its default
    (`a @ b`, MKL on x86) and oneDNN on a packed operand (what the engine runs on CPU, when
    available). The ceiling takes the fastest: the machine's rate, not one library's."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    products = {"torch default": lambda: a @ b}
    if onednn_packing_available():
        packed = pack_weight(b.t().contiguous())  # a @ b as a linear layer of weight b^T
        products["oneDNN packed"] = lambda: packed_linear(a, packed)
    rates = {}
    for name, product in products.items():
        for _ in range(3):
            product()
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            product()
            runs += 1
        rates[name] = 2 * size**3 * runs / (time.perf_counter() - started)
    return rates


def workload_flops(model: torch.nn.Module, workload: Workload) -> float:
    embed = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings().weight.numel()
    body = sum(p.numel() for p in model.parameters()) - embed - head
    tokens = sum(len(p) for p in workload.prompts) + workload.num_output_tokens
    return 2.0 * body * tokens + 2.0 * head * workload.num_output_tokens


def run_engine(
    model: str, workload: Workload, warmup: Workload, tp: int, max_num_batched_tokens: int
) -> Result:
    """`warmup` holds other prompts than `workload`: a warm-up on the workload's own prompts
    would leave their blocks in the prefix cache and skip part of the timed prefill."""
    engine = LLMEngine(
        EngineConfig(
            model=model,
            dtype="float32",
            device="cpu",
            tensor_parallel_size=tp,
            max_num_seqs=len(workload.prompts),
            max_num_batched_tokens=max_num_batched_tokens,
            max_model_len=512,
            kv_cache_memory_bytes=1 << 30,
        )
    )
    params = [
        SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in workload.output_lens
    ]
    engine.generate(
        warmup.prompts,
        [
            SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
            for n in warmup.output_lens
        ],
    )
    started = time.perf_counter()
    outputs = engine.generate(workload.prompts, params)
    seconds = time.perf_counter() - started
    engine.shutdown()
    assert [len(o) for o in outputs] == workload.output_lens
    return Result(f"(c) engine tp={tp}", len(outputs), workload.num_output_tokens, seconds)


def run_hf_one_at_a_time(hf_model, workload: Workload) -> Result:
    started = time.perf_counter()
    for prompt, output_len in zip(workload.prompts, workload.output_lens, strict=True):
        hf_model.generate(
            torch.tensor([prompt]),
            max_new_tokens=output_len,
            min_new_tokens=output_len,
            do_sample=False,
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        )
    return Result(
        "(a) HF generate, 1 at a time",
        len(workload.prompts),
        workload.num_output_tokens,
        time.perf_counter() - started,
    )


def run_hf_static_batches(hf_model, workload: Workload, batch_size: int) -> Result:
    """Left-padded batches; each runs to its longest output. Only requested tokens count."""
    started = time.perf_counter()
    for start in range(0, len(workload.prompts), batch_size):
        prompts = workload.prompts[start : start + batch_size]
        longest = max(len(p) for p in prompts)
        ids = torch.tensor([[0] * (longest - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
        new_tokens = max(workload.output_lens[start : start + batch_size])
        hf_model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    return Result(
        f"(b) HF generate, static batches of {batch_size}",
        len(workload.prompts),
        workload.num_output_tokens,
        time.perf_counter() - started,
    )


def run_round(args, hf_model, model_dir, workload: Workload) -> dict[tuple[str, str], float]:
    """Every system once, between two measurements of the matmul rate; prints their table
    and returns the engine's ratios to the others."""
    rate_before = measure_matmul_flops()
    results: list[Result] = []
    if not args.skip_hf:
        with torch.inference_mode():
            results.append(run_hf_one_at_a_time(hf_model, workload.subset(args.hf_single_requests)))
            results.append(
                run_hf_static_batches(hf_model, workload.subset(args.hf_batched_requests), 16)
            )
    warmup = make_workload(2, hf_model.config.vocab_size, args.seed + 1)
    results += [
        run_engine(str(model_dir), workload, warmup, tp, args.max_num_batched_tokens)
        for tp in args.tp
    ]
    # The rate varies by 10-25% between runs on a shared VM: measured before and after the
    # systems, the higher (the stricter ceiling) is used.
    rate_after = measure_matmul_flops()
    matmul_rate = max(*rate_before.values(), *rate_after.values())
    ceiling_seconds = workload_flops(hf_model, workload) / matmul_rate
    results.append(
        Result(
            "ceiling (matmul FLOPs / peak)",
            len(workload.prompts),
            workload.num_output_tokens,
            ceiling_seconds,
        )
    )
    print(
        f"\nmodel={args.model} float32, {torch.get_num_threads()} threads, host memory in "
        f"{'huge pages' if malloc_uses_huge_pages() else '4 KiB pages'}, "
        f"{len(workload.prompts)} requests, {workload.num_output_tokens} output tokens, "
        f"float32 matmul rate {matmul_rate / 1e9:.1f} GFLOP/s, the highest of (GFLOP/s, "
        "1024 x 1024 matmuls): "
        + ", ".join(
            f"{name} {before / 1e9:.1f} before / {rate_after[name] / 1e9:.1f} after the runs"
            for name, before in rate_before.items()
        )
    )
    print(f"{'system':<38} {'requests':>8} {'out tok':>8} {'seconds':>8} {'tok/s':>8}")
    for result in results:
        print(
            f"{result.system:<38} {result.requests:>8} {result.output_tokens:>8} "
            f"{result.seconds:>8.2f} {result.tokens_per_s:>8.1f}"
        )
    ratios: dict[tuple[str, str], float] = {}
    for engine_result in results:
        if not engine_result.system.startswith("(c)"):
            continue
        print(f"\n{engine_result.system}:")
        for other in results:
            if other is not engine_result:
                ratio = engine_result.tokens_per_s / other.tokens_per_s
                ratios[engine_result.system, other.system] = ratio
                print(f"  vs {other.system:<36} {ratio:6.2f}x")
    return ratios


def rerun_with_huge_pages() -> None:
    """Re-run this script in a process started with glibc's huge-page tunable (read only at
    process start), where the kernel gives huge pages on request (THP `madvise`) and this
    process lacks it: the engine is measured as `make run` starts it (bench/README.md: 4-8%
    faster). Every system of the run shares the process and the setting."""
    if transparent_huge_page_mode() != "madvise" or malloc_uses_huge_pages():
        return
    current = os.environ.get("GLIBC_TUNABLES")
    env = {
        **os.environ,
        "GLIBC_TUNABLES": f"{current}:{HUGE_PAGE_TUNABLE}" if current else HUGE_PAGE_TUNABLE,
    }
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)  # the same command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bench")
    parser.add_argument("--num-requests", type=int, default=128)
    parser.add_argument(
        "--tp",
        type=int,
        nargs="+",
        default=[1],
        help="tensor-parallel sizes to run the engine at, e.g. --tp 1 2",
    )
    parser.add_argument(
        "--hf-single-requests",
        type=int,
        default=8,
        help="requests run one at a time for (a) (a sample: it is slow)",
    )
    parser.add_argument(
        "--hf-batched-requests",
        type=int,
        default=128,
        help="requests run in static batches for (b)",
    )
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048)
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every system this many times, in turn, and summarize the ratios (this "
        "machine's speed drifts by 10-20%% between minutes; about 75 s a round)",
    )
    parser.add_argument(
        "--no-huge-pages",
        action="store_true",
        help="do not re-run in a process with the huge-page tunable (by default the script "
        "re-runs itself with the glibc tunable that `make run` gives the serving processes)",
    )
    args = parser.parse_args()
    if not args.no_huge_pages:
        rerun_with_huge_pages()

    from transformers import AutoModelForCausalLM

    model_dir = resolve_model_dir(args.model)
    hf_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    hf_model.generation_config.eos_token_id = None
    workload = make_workload(args.num_requests, hf_model.config.vocab_size, args.seed)
    torch.manual_seed(args.seed)

    all_ratios: dict[tuple[str, str], list[float]] = {}
    for round_index in range(args.rounds):
        if args.rounds > 1:
            print(f"\n=== round {round_index + 1} of {args.rounds}")
        for key, ratio in run_round(args, hf_model, model_dir, workload).items():
            all_ratios.setdefault(key, []).append(ratio)
    if args.rounds > 1:
        print(f"\nratios over {args.rounds} rounds: median (min - max)")
        for (engine, other), values in all_ratios.items():
            print(
                f"  {engine} vs {other:<36} {statistics.median(values):6.2f}x "
                f"({min(values):.2f} - {max(values):.2f})"
            )


if __name__ == "__main__":
    main()
