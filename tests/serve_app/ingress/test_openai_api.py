"""The live app through the official `openai` SDK: completions and chat, streaming or not,
stop strings, max_tokens, seeds, and greedy output equal to the engine's own."""

from __future__ import annotations

import pytest

from serve_app.engine.sampling_params import SamplingParams
from tests.serve_app.replica_idle import wait_for_idle

pytestmark = [pytest.mark.slow, pytest.mark.ray]

PROMPT = "The quick brown fox"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]


def stream_completion(client, **kwargs):
    chunks = list(client.completions.create(stream=True, **kwargs))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    return text, finish, chunks


def test_models_lists_the_served_model(client):
    assert [model.id for model in client.models.list()] == ["tiny"]


def test_greedy_completion_equals_engine_greedy(client, engine, tokenizer):
    max_tokens = 12
    prompt_ids = tokenizer.encode(PROMPT)
    [expected_ids] = engine.generate([prompt_ids], SamplingParams(max_tokens, temperature=0))
    expected = tokenizer.decode(expected_ids, skip_special_tokens=True)

    response = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=max_tokens, temperature=0
    )
    assert response.choices[0].text == expected
    assert response.usage.prompt_tokens == len(prompt_ids)
    assert response.usage.completion_tokens == len(expected_ids)
    assert response.usage.total_tokens == len(prompt_ids) + len(expected_ids)

    # Token ids as the prompt give the same result as the text.
    by_ids = client.completions.create(
        model="tiny", prompt=prompt_ids, max_tokens=max_tokens, temperature=0
    )
    assert by_ids.choices[0].text == expected

    text, finish, chunks = stream_completion(
        client,
        model="tiny",
        prompt=PROMPT,
        max_tokens=max_tokens,
        temperature=0,
        stream_options={"include_usage": True},
    )
    assert text == expected
    assert finish == [response.choices[0].finish_reason]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == len(expected_ids)


def test_chat_uses_the_template_and_equals_engine_greedy(client, engine, tokenizer):
    rendered = "<|system|>Be brief.<|end_of_text|><|user|>Hi there<|end_of_text|><|assistant|>"
    prompt_ids = tokenizer.encode(rendered, add_special_tokens=False)
    [expected_ids] = engine.generate([prompt_ids], SamplingParams(10, temperature=0))
    expected = tokenizer.decode(expected_ids, skip_special_tokens=True)

    response = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=10, temperature=0
    )
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].message.content == expected
    assert response.usage.prompt_tokens == len(prompt_ids)
    assert response.usage.completion_tokens == len(expected_ids)

    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert chunks[-1].usage.completion_tokens == len(expected_ids)
    assert chunks[-1].usage.prompt_tokens == len(prompt_ids)


def test_max_tokens_gives_length_with_exact_usage(client, engine, tokenizer):
    prompt_ids = tokenizer.encode("Once upon a time")
    [greedy] = engine.generate([prompt_ids], SamplingParams(max_tokens=7, temperature=0))
    assert len(greedy) == 7, "the prompt must not hit EOS within 7 tokens"
    response = client.completions.create(
        model="tiny", prompt="Once upon a time", max_tokens=7, temperature=0
    )
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 7
    assert response.usage.prompt_tokens == len(prompt_ids)


def test_stop_string_ends_the_text_before_it(client, replica_handle):
    full = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=24, temperature=0)
    text = full.choices[0].text
    # A stop string from the middle of the greedy text, made of whole characters.
    start = next(i for i in range(4, len(text) - 2) if "\ufffd" not in text[i : i + 2])
    stop = text[start : start + 2]
    expected = text[: text.find(stop)]

    stopped = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop, "never-there"]
    )
    assert stopped.choices[0].text == expected
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.usage.completion_tokens < full.usage.completion_tokens  # stopped early

    streamed, finish, _ = stream_completion(
        client, model="tiny", prompt=PROMPT, max_tokens=24, temperature=0, stop=stop
    )
    assert (streamed, finish) == (expected, ["stop"])
    assert wait_for_idle(replica_handle)["num_running"] == 0


def test_seeded_sampling_is_reproducible(client):
    def sample(seed: int) -> str:
        response = client.completions.create(
            model="tiny", prompt=PROMPT, max_tokens=16, temperature=1.0, top_p=0.9, seed=seed
        )
        return response.choices[0].text

    first = sample(11)
    assert sample(11) == first
    assert sample(12) != first


def test_several_prompts_and_n_give_indexed_choices(client, engine, tokenizer):
    prompts = ["Hello", "World"]
    expected = engine.generate(
        [tokenizer.encode(p) for p in prompts], SamplingParams(max_tokens=4, temperature=0)
    )
    response = client.completions.create(
        model="tiny", prompt=prompts, n=2, max_tokens=4, temperature=0
    )
    assert [choice.index for choice in response.choices] == [0, 1, 2, 3]
    texts = [choice.text for choice in response.choices]
    decoded = [tokenizer.decode(ids, skip_special_tokens=True) for ids in expected]
    assert texts == [decoded[0], decoded[0], decoded[1], decoded[1]]  # choice = prompt * n + j
    assert response.usage.completion_tokens == 2 * sum(len(ids) for ids in expected)
    # As OpenAI counts: each prompt once, however many choices it has.
    assert response.usage.prompt_tokens == sum(len(tokenizer.encode(p)) for p in prompts)


def test_logprobs_are_returned(client):
    response = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=3, temperature=0, logprobs=2
    )
    logprobs = response.choices[0].logprobs
    assert len(logprobs.tokens) == 3
    assert all(lp <= 0 for lp in logprobs.token_logprobs)
    assert all(len(top) == 2 for top in logprobs.top_logprobs)
    # Greedy: the chosen token is the most likely one.
    assert all(
        lp == pytest.approx(max(top.values()))
        for lp, top in zip(logprobs.token_logprobs, logprobs.top_logprobs, strict=True)
    )
