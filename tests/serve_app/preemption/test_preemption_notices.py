"""Notice sources against a fake metadata server on loopback: the AWS IMDSv2 token flow,
404 as "no notice", GCP TRUE/FALSE, the file trigger, and the config's errors."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from serve_app.preemption.config import WatcherConfigError, load_watcher_config
from serve_app.preemption.notices import (
    AWS_NOTICE_PATH,
    AWS_TOKEN_PATH,
    AWS_TOKEN_TTL_HEADER,
    AwsSpotNotices,
    FileTrigger,
    GcpPreemptionNotices,
    NoticeSourceError,
)
from tests.serve_app.conftest import free_port
from tests.serve_app.preemption.fake_metadata_server import FakeMetadataServer

START = 1_800_000_000.0  # an arbitrary epoch second


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def metadata() -> Iterator[FakeMetadataServer]:
    with FakeMetadataServer() as server:
        yield server


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5, trust_env=False) as client:
        yield client


def aws_source(metadata, http, clock, **overrides) -> AwsSpotNotices:
    config = load_watcher_config({"provider": "aws", "metadata_url": metadata.url, **overrides})
    return AwsSpotNotices(config, http, clock)


def test_aws_404_is_no_notice_and_the_token_is_sent(metadata, http):
    source = aws_source(metadata, http, FakeClock(), aws_token_ttl_s=300)
    assert source.poll() is None
    [put, get] = metadata.state.requests
    assert put[:2] == ("PUT", AWS_TOKEN_PATH) and put[2][AWS_TOKEN_TTL_HEADER] == "300"
    assert get[:2] == ("GET", AWS_NOTICE_PATH) and get[2]["X-aws-ec2-metadata-token"] == "token-1"


def test_aws_notice_is_parsed_into_its_termination_time(metadata, http):
    metadata.state.aws_notice = {"action": "terminate", "time": "2027-01-15T08:22:00Z"}
    notice = aws_source(metadata, http, FakeClock()).poll()
    assert notice is not None
    assert notice.action == "terminate" and notice.source == "aws"
    expected = datetime(2027, 1, 15, 8, 22, tzinfo=UTC).timestamp()
    assert notice.terminates_at == expected


def test_aws_token_is_reused_until_shortly_before_it_expires(metadata, http):
    clock = FakeClock()
    source = aws_source(metadata, http, clock, aws_token_ttl_s=300)
    source.poll()
    clock.now += 200  # 100 s of the token left: still used
    source.poll()
    assert metadata.state.count("PUT", AWS_TOKEN_PATH) == 1
    clock.now += 50  # 50 s left, inside the refresh margin: a new token
    source.poll()
    assert metadata.state.count("PUT", AWS_TOKEN_PATH) == 2
    assert metadata.state.requests[-1][2]["X-aws-ec2-metadata-token"] == "token-2"


def test_aws_token_refused_with_401_is_renewed_within_the_same_poll(metadata, http):
    metadata.state.aws_notice = {"action": "stop", "time": "2027-01-15T08:22:00Z"}
    source = aws_source(metadata, http, FakeClock())
    assert source.poll() is not None
    metadata.state.valid_tokens.clear()  # IMDS forgot every token (e.g. it restarted)
    notice = source.poll()
    assert notice is not None and notice.action == "stop"
    assert metadata.state.count("PUT", AWS_TOKEN_PATH) == 2


@pytest.mark.parametrize("body", ['{"action": "terminate"}', "not json", '{"time": "soon"}'])
def test_aws_unreadable_notice_is_an_error_not_silence(metadata, http, body):
    metadata.state.aws_notice = body
    with pytest.raises(NoticeSourceError, match="aws: unreadable notice"):
        aws_source(metadata, http, FakeClock()).poll()


def test_aws_unreachable_endpoint_raises_a_source_error(http):
    closed = load_watcher_config(
        {"provider": "aws", "metadata_url": f"http://127.0.0.1:{free_port()}"}
    )
    source = AwsSpotNotices(closed, http, FakeClock())  # nothing listens: refused at once
    with pytest.raises(NoticeSourceError, match="aws: PUT"):
        source.poll()


def test_gcp_false_then_true_with_the_metadata_flavor_header(metadata, http):
    clock = FakeClock()
    config = load_watcher_config({"provider": "gcp", "metadata_url": metadata.url})
    source = GcpPreemptionNotices(config, http, clock)
    assert source.poll() is None
    metadata.state.gcp_preempted = True
    notice = source.poll()
    assert notice is not None and notice.terminates_at == START + 30  # GCP's 30 s notice
    assert all(
        headers.get("Metadata-Flavor") == "Google" for *_, headers in metadata.state.requests
    )


def test_file_trigger_reads_an_optional_notice_length(tmp_path):
    clock = FakeClock()
    trigger = tmp_path / "preempt"
    source = FileTrigger(load_watcher_config({"provider": "file", "trigger_file": trigger}), clock)
    assert source.poll() is None
    trigger.write_text("")
    assert source.poll().terminates_at == START + 120
    trigger.write_text("15\n")
    assert source.poll().terminates_at == START + 15
    trigger.write_text("soon")
    with pytest.raises(NoticeSourceError, match="empty or hold seconds"):
        source.poll()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"provider": "azure"}, "provider: Input should be 'aws', 'gcp' or 'file'"),
        ({"provider": "file"}, "trigger_file: required when provider is 'file'"),
        ({"provider": "gcp", "safety_margin_s": 30}, "safety_margin_s: must be below the notice"),
        ({"provider": "aws", "node_id": "abc"}, "node_id: expected 56 lowercase hex digits"),
        ({"provider": "aws", "poll_interval_s": 0}, "poll_interval_s: Input should be greater"),
        ({"provider": "aws", "colour": "red"}, "colour: Extra inputs are not permitted"),
    ],
)
def test_invalid_config_names_the_field(values, message):
    with pytest.raises(WatcherConfigError, match=message):
        load_watcher_config(values)
