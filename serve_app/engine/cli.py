"""Command line for the engine alone (no Ray): `python -m serve_app.engine.cli generate`."""

from __future__ import annotations

import argparse
import time

from serve_app.engine.config import EngineConfig
from serve_app.engine.engine import LLMEngine
from serve_app.engine.sampling_params import SamplingParams


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serve_app.engine.cli")
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="complete one prompt and print the text")
    generate.add_argument("--model", default="tiny", help="HF directory or preset (tiny, bench)")
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--max-tokens", type=int, default=32)
    generate.add_argument("--temperature", type=float, default=0.0)
    generate.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    engine = LLMEngine(EngineConfig(model=args.model))
    tokenizer = AutoTokenizer.from_pretrained(engine.model_dir)
    prompt_ids = tokenizer.encode(args.prompt, add_special_tokens=False)
    params = SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed
    )
    started = time.perf_counter()
    [output_ids] = engine.generate([prompt_ids], params)
    elapsed = time.perf_counter() - started
    print(tokenizer.decode(output_ids, skip_special_tokens=True))
    print(f"[{len(prompt_ids)} prompt tokens, {len(output_ids)} output tokens, {elapsed:.2f}s]")
    engine.shutdown()


if __name__ == "__main__":
    main()
