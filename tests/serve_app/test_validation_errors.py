"""A config typo or out-of-range value, anywhere in the app args, reads as one line that
names the field and what it allows."""

from __future__ import annotations

import pytest

from serve_app.config import AppConfigError, load_app_config


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            {"batcher": {"policy": {"max_wiat_ms": 5}}},
            "unknown field 'batcher.policy.max_wiat_ms' "
            "(allowed: max_batch_size, max_wait_ms, smoothing, target_ttft_ms)",
        ),
        (  # a section that may be absent (`autoscaling: null`)
            {"replica": {"autoscaling": {"max_replica": 3}}},
            "unknown field 'replica.autoscaling.max_replica' (allowed: downscale_after_s, "
            "max_replicas, metrics_window_s, min_replicas, policy, target_kv_cache_usage, "
            "target_ongoing_requests, target_ttft_s, target_waiting_requests)",
        ),
        (
            {"replic": {"num_cpus": 1}},
            "unknown field 'replic' (allowed: admission, auth, batcher, engine, ingress, "
            "limits, model, placement, replica, request_log, serve_preset, served_model_name)",
        ),
        (
            {"batcher.policy.max_batch_size": "0"},
            "batcher.policy.max_batch_size: Input should be greater than or equal to 1, "
            "got '0' (allowed: an int in [1, 4096])",
        ),
        (
            {"replica": {"stall_timeout_s": 1}},
            "replica.stall_timeout_s: Input should be greater than or equal to 2, got 1 "
            "(allowed: a number >= 2.0)",
        ),
        (  # a section's own rule: its message names the fields, the input is not repeated
            {"replica": {"autoscaling": {"min_replicas": 3, "max_replicas": 2}}},
            "replica.autoscaling: Value error, min_replicas (3) must be <= max_replicas (2)",
        ),
    ],
    ids=[
        "nested-typo",
        "optional-section-typo",
        "top-level-typo",
        "below-range",
        "one-bound",
        "section-rule",
    ],
)
def test_the_line_names_the_field_and_what_it_allows(args: dict, line: str) -> None:
    with pytest.raises(AppConfigError) as raised:
        load_app_config(args)
    assert str(raised.value) == f"invalid app config: {line}"
