"""The errors a caller of the engine catches when the engine, not the request, failed.

Torch-free on purpose: the ingress and the batcher catch them without importing the engine
(see mailbox.py).
"""

from __future__ import annotations


class EngineDeadError(RuntimeError):
    """The engine loop stopped (a step raised, or shutdown); no request can progress."""


class TensorParallelError(RuntimeError):
    """A tensor-parallel rank died or failed; the executor has shut down and cannot serve."""
