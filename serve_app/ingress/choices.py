"""From a validated OpenAI request to the choices to generate: tokenize (chat template for
chat), enforce the deployment's limits, and build each choice's SamplingParams."""

from __future__ import annotations

from serve_app.config import LimitSettings
from serve_app.engine.sampling_params import SamplingParams, SamplingParamsError
from serve_app.ingress.errors import APIError
from serve_app.ingress.protocol import ChatCompletionRequest, CompletionRequest
from serve_app.ingress.text_stream import ChoiceRequest


def completion_prompts(request: CompletionRequest, tokenizer) -> list[list[int]]:
    prompts = request.prompts()
    if not prompts:
        raise APIError(400, "prompt must not be empty", param="prompt", code="invalid_value")
    return [
        tokenizer.encode(prompt, add_special_tokens=True) if isinstance(prompt, str) else prompt
        for prompt in prompts
    ]


def chat_prompt(request: ChatCompletionRequest, tokenizer) -> list[int]:
    try:
        messages = [{"role": m.role, "content": m.text()} for m in request.messages]
    except ValueError as error:
        raise APIError(400, str(error), param="messages", code="invalid_value") from None
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


def build_choices(
    request: CompletionRequest | ChatCompletionRequest,
    prompts: list[list[int]],
    limits: LimitSettings,
    num_logprobs: int | None,
    request_id: str,
) -> list[ChoiceRequest]:
    """One ChoiceRequest per (prompt, n); choice index = prompt_index * n + j (as OpenAI)."""
    for prompt in prompts:
        if not prompt:
            raise APIError(400, "prompt must not be empty", param="prompt", code="invalid_value")
        if len(prompt) > limits.max_prompt_tokens:
            raise APIError(
                400,
                f"the prompt has {len(prompt)} tokens; at most {limits.max_prompt_tokens} are "
                "allowed",
                param="prompt",
                code="context_length_exceeded",
            )
    num_choices = len(prompts) * request.n
    if num_choices > limits.max_choices:
        raise APIError(
            400,
            f"prompts x n is {num_choices}; at most {limits.max_choices} choices per request",
            param="n",
            code="invalid_value",
        )
    if len(request.stop_strings) > limits.max_stop_strings:
        raise APIError(
            400,
            f"at most {limits.max_stop_strings} stop strings",
            param="stop",
            code="invalid_value",
        )
    max_tokens = _max_tokens(request, limits)
    choices = []
    for prompt_index, prompt in enumerate(prompts):
        for j in range(request.n):
            # n > 1 with a seed: each choice gets its own reproducible seed.
            seed = None if request.seed is None else (request.seed + j) % 2**63
            index = prompt_index * request.n + j
            params = _sampling_params(request, max_tokens, seed, num_logprobs)
            choices.append(
                ChoiceRequest(index, prompt, params, request.stop_strings, f"{request_id}-{index}")
            )
    return choices


def _max_tokens(request: CompletionRequest | ChatCompletionRequest, limits: LimitSettings) -> int:
    requested = request.max_tokens
    if isinstance(request, ChatCompletionRequest) and request.max_completion_tokens is not None:
        requested = request.max_completion_tokens
    if requested is None:
        return limits.default_max_tokens
    if requested > limits.max_tokens:
        raise APIError(
            400,
            f"max_tokens must be <= {limits.max_tokens}, got {requested}",
            param="max_tokens",
            code="invalid_value",
        )
    return requested


def _sampling_params(
    request: CompletionRequest | ChatCompletionRequest,
    max_tokens: int,
    seed: int | None,
    num_logprobs: int | None,
) -> SamplingParams:
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=request.top_k,
            min_p=request.min_p,
            repetition_penalty=request.repetition_penalty,
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
            seed=seed,
            stop_token_ids=list(request.stop_token_ids),
            min_tokens=request.min_tokens,
            ignore_eos=request.ignore_eos,
            logprobs=num_logprobs,
        )
    except SamplingParamsError as error:
        param = str(error).split(" ", 1)[0]
        raise APIError(400, str(error), param=param, code="invalid_value") from None
