"""Suite-wide pytest setup: `gpu` tests skip cleanly where CUDA is absent, and the tests that
run a Ray cluster of their own in a subprocess run before the session's shared Ray starts.

The session's Ray (tests/serve_app/conftest.py, `live_app`) and its apps use some 0.4 of
this 2-core machine's cores even while idle; the chaos matrix, run beside it, took 175 s
instead of some 115 s alone."""

from __future__ import annotations

import pytest
import torch

# Test files (paths from the repository root) that run before every test using the
# session's Ray; they use none of its fixtures.
OWN_CLUSTER_FIRST = ("tests/serve_app/chaos/",)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    own_cluster = [item for item in items if item.nodeid.startswith(OWN_CLUSTER_FIRST)]
    if own_cluster:
        first_serve = next(
            i for i, item in enumerate(items) if item.nodeid.startswith("tests/serve_app/")
        )
        rest = [item for item in items if item not in own_cluster]
        items[:] = rest[:first_serve] + own_cluster + rest[first_serve:]
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
