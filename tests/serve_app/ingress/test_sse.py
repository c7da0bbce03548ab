"""An SSE event stays one line for every client: characters that Unicode-aware line readers
split on are escaped, and the JSON still decodes to the same text."""

from __future__ import annotations

import json

from serve_app.ingress import sse


def test_an_event_is_one_line_whatever_the_text():
    text = "a\x85b\u2028c\u2029d\ne é"
    event = sse.event({"text": text})
    assert event.endswith("\n\n") and len(event[:-2].splitlines()) == 1
    assert json.loads(event[len("data: ") : -2]) == {"text": text}
    assert "é" in event  # other non-ASCII text is kept as is
