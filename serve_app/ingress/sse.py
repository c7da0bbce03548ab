"""Server-sent events as OpenAI streams them: `data: <json>` per event, then `data: [DONE]`.

The JSON keeps non-ASCII text as is, except the characters that some clients take for line
breaks (U+0085, U+2028, U+2029: Python's `str.splitlines`, which httpx's line reader
uses), which are escaped so an event always stays one line.
"""

from __future__ import annotations

import json
from typing import Any

DONE = "data: [DONE]\n\n"
MEDIA_TYPE = "text/event-stream"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def event(payload: dict[str, Any]) -> str:
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).translate(_LINE_BREAKS)
    return f"data: {data}\n\n"
