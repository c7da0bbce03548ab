"""OpenAI response bodies for completions and chat completions: whole responses, stream
chunks and log-probabilities, built from the TextDeltas of each choice."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from serve_app.engine.sequence import TokenLogprobs
from serve_app.ingress.protocol import usage
from serve_app.ingress.text_stream import TextDelta


@dataclass
class ChoiceResult:
    """A finished choice, accumulated from its deltas."""

    index: int
    text: str = ""
    finish_reason: str | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    logprobs: list[TokenLogprobs] = field(default_factory=list)

    def add(self, delta: TextDelta) -> None:
        self.text += delta.text
        self.finish_reason = delta.finish_reason or self.finish_reason
        self.num_prompt_tokens = delta.num_prompt_tokens
        self.num_output_tokens = delta.num_output_tokens
        self.logprobs += delta.logprobs


class ResponseBuilder:
    """Shapes one request's output as `text_completion` or `chat.completion` objects."""

    def __init__(
        self,
        chat: bool,
        response_id: str,
        model: str,
        created: int,
        tokenizer,
        with_logprobs: bool,
    ) -> None:
        self.chat = chat
        self.response_id = response_id
        self.model = model
        self.created = created
        self.tokenizer = tokenizer
        self.with_logprobs = with_logprobs
        self._text_offsets: dict[int, int] = {}

    def _envelope(self, object_name: str, choices: list[dict], **extra: Any) -> dict[str, Any]:
        return {
            "id": self.response_id,
            "object": object_name,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }

    # ---- whole responses ----------------------------------------------------------------
    def full(self, results: list[ChoiceResult], prompt_tokens: int) -> dict[str, Any]:
        completion_tokens = sum(result.num_output_tokens for result in results)
        choices = [self._full_choice(result) for result in sorted(results, key=lambda r: r.index)]
        name = "chat.completion" if self.chat else "text_completion"
        return self._envelope(name, choices, usage=usage(prompt_tokens, completion_tokens))

    def _full_choice(self, result: ChoiceResult) -> dict[str, Any]:
        logprobs = self._logprobs(result.index, result.logprobs)
        if self.chat:
            message = {"role": "assistant", "content": result.text}
            return {
                "index": result.index,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": result.finish_reason,
            }
        return {
            "index": result.index,
            "text": result.text,
            "logprobs": logprobs,
            "finish_reason": result.finish_reason,
        }

    # ---- stream chunks ------------------------------------------------------------------
    def role_chunk(self, index: int) -> dict[str, Any]:
        """Chat streams open each choice with the assistant role."""
        choice = {
            "index": index,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        return self._envelope("chat.completion.chunk", [choice])

    def chunk(self, delta: TextDelta) -> dict[str, Any]:
        logprobs = self._logprobs(delta.index, delta.logprobs)
        if self.chat:
            content = {"content": delta.text} if delta.text else {}
            choice = {
                "index": delta.index,
                "delta": content,
                "logprobs": logprobs,
                "finish_reason": delta.finish_reason,
            }
            return self._envelope("chat.completion.chunk", [choice])
        choice = {
            "index": delta.index,
            "text": delta.text,
            "logprobs": logprobs,
            "finish_reason": delta.finish_reason,
        }
        return self._envelope("text_completion", [choice])

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        name = "chat.completion.chunk" if self.chat else "text_completion"
        return self._envelope(name, [], usage=usage(prompt_tokens, completion_tokens))

    # ---- log-probabilities ----------------------------------------------------------------
    def _logprobs(self, index: int, entries: list[TokenLogprobs]) -> dict[str, Any] | None:
        if not self.with_logprobs:
            return None
        if self.chat:
            return {"content": [self._chat_logprob(entry) for entry in entries]}
        tokens, offsets = [], []
        for entry in entries:
            token = self._token_text(entry.token_id)
            offset = self._text_offsets.get(index, 0)
            offsets.append(offset)
            self._text_offsets[index] = offset + len(token)
            tokens.append(token)
        return {
            "tokens": tokens,
            "token_logprobs": [entry.logprob for entry in entries],
            "top_logprobs": [
                {self._token_text(token_id): lp for token_id, lp in entry.top.items()}
                for entry in entries
            ],
            "text_offset": offsets,
        }

    def _chat_logprob(self, entry: TokenLogprobs) -> dict[str, Any]:
        token = self._token_text(entry.token_id)
        return {
            "token": token,
            "logprob": entry.logprob,
            "bytes": list(token.encode()),
            "top_logprobs": [
                {
                    "token": (text := self._token_text(token_id)),
                    "logprob": lp,
                    "bytes": list(text.encode()),
                }
                for token_id, lp in entry.top.items()
            ],
        }

    def _token_text(self, token_id: int) -> str:
        """The token's text, or `token_id:<id>` where that text is not a whole character
        (part of a UTF-8 sequence, or an id the tokenizer lacks), so names stay unique."""
        text = self.tokenizer.decode([token_id], skip_special_tokens=False)
        if not text or "\ufffd" in text:
            return f"token_id:{token_id}"
        return text
