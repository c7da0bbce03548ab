"""One Ray instance and one Serve app per test session, on loopback with small resources.

The app runs the embedded `tiny` model with deliberately small admission limits so the
overload test can exceed them; API keys come from a file so the auth test has one to use.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

API_KEY = "test-key-1"
MAX_REQUESTS = 12  # running + queued in the whole app, then 429
APP_NAME = "llm"
GRPC_SERVICER = "serve_app.proto.llm_pb2_grpc.add_LLMServicer_to_server"


@dataclass(frozen=True)
class LiveApp:
    base_url: str  # http://127.0.0.1:<port>
    metrics_url: str  # Ray's Prometheus exporter on this node
    api_key: str
    model: str
    args: dict
    grpc_target: str = ""  # 127.0.0.1:<port> of Serve's gRPC proxy

    @property
    def api_url(self) -> str:
        return self.base_url + "/v1"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def app_args(keys_file: Path) -> dict:
    return {
        "model": "tiny",
        "engine": {"max_num_seqs": 8, "kv_cache_memory_bytes": 8 * 2**20},
        "replica": {"num_cpus": 0.5, "health_check_period_s": 2},
        "ingress": {"num_cpus": 0.1},
        "batcher": {"enabled": True, "num_cpus": 0.1},  # every HTTP test goes through it
        # Small, so the overload test's flood clearly exceeds what the app admits.
        "admission": {"max_requests": MAX_REQUESTS},
        "limits": {
            "max_prompt_tokens": 256,
            "max_tokens": 2000,
            "max_body_bytes": 64 * 1024,
            "max_choices": 4,
            "retry_after_s": 2,
        },
        "auth": {"api_keys_env": None, "api_keys_file": str(keys_file)},
    }


@pytest.fixture(scope="session")
def live_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    import ray
    from ray import serve

    from serve_app.app import build_app

    keys_file = tmp_path_factory.mktemp("auth") / "keys.txt"
    keys_file.write_text(f"# test keys\n{API_KEY}\nsecond-key\n")
    metrics_port = free_port()
    ray.init(
        address="local",
        _node_ip_address="127.0.0.1",  # Ray's nodes talk to each other over loopback
        num_cpus=4,  # logical CPUs: room for extra test apps beside the shared one
        object_store_memory=256 * 2**20,  # tests move token ids, not tensors
        include_dashboard=False,
        log_to_driver=False,
        _metrics_export_port=metrics_port,
    )
    # Picked once Ray's own servers hold their ports, so they cannot take these.
    port, grpc_port = free_port(), free_port()
    try:
        serve.start(
            http_options={"host": "127.0.0.1", "port": port},
            grpc_options={"port": grpc_port, "grpc_servicer_functions": [GRPC_SERVICER]},
        )
        args = app_args(keys_file)
        serve.run(build_app(args), name=APP_NAME, route_prefix="/")
        yield LiveApp(
            f"http://127.0.0.1:{port}",
            f"http://127.0.0.1:{metrics_port}/metrics",
            API_KEY,
            "tiny",
            args,
            grpc_target=f"127.0.0.1:{grpc_port}",
        )
    finally:
        # No serve.shutdown(): it stops every replica gracefully, one after another (some 8 s
        # here), and ray.shutdown() ends this local cluster's processes right after anyway.
        ray.shutdown()


SPARE_APP = "spare"
# Its ingress probes the model replicas' health often, with a short timeout: the zombie
# test sees a stopped replica in about 2 s instead of the default's 7.
SPARE_HEALTH_PERIOD_S = 0.5
SPARE_HEALTH_TIMEOUT_S = 1.5


@pytest.fixture(scope="session")
def spare_app_url(live_app: LiveApp) -> Iterator[str]:
    """A second app beside the session's, shared by the tests that each need one of their
    own settings but none of the other's: two model replicas (the zombie test stops them
    all) that group tokens into fewer messages (the coalesced-delivery test). One app start
    (some 15 s on 2 cores) instead of two."""
    from ray import serve

    from serve_app.app import build_app

    args = {
        **live_app.args,
        "replica": {
            **live_app.args["replica"],
            "num_replicas": 2,
            "num_cpus": 0.25,
            "stream_interval_ms": 300,
            "stream_interval_tokens": 3,
        },
        "ingress": {
            "num_cpus": 0.05,
            "replica_health_period_s": SPARE_HEALTH_PERIOD_S,
            "replica_health_timeout_s": SPARE_HEALTH_TIMEOUT_S,
        },
        "batcher": {**live_app.args["batcher"], "num_cpus": 0.05},
    }
    serve.run(build_app(args), name=SPARE_APP, route_prefix="/" + SPARE_APP)
    yield f"{live_app.base_url}/{SPARE_APP}"  # live_app's teardown stops it with Ray


SMALL_APP = "small"


@dataclass(frozen=True)
class SmallApp:
    name: str  # the Serve application (gRPC's `application` metadata)
    api_url: str  # http://127.0.0.1:<port>/tight/v1
    request_log: Path  # its request log file (text on)


@pytest.fixture(scope="session")
def small_app(live_app: LiveApp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmallApp]:
    """A second app, easy to fill exactly: it admits two requests (admission.max_requests)
    and its batcher runs one and queues one (Serve's max_ongoing/max_queued_requests), so a
    third concurrent request gets a 429 / RESOURCE_EXHAUSTED. It logs every request to a
    file with text on. Shared by the gRPC overload test and the request-log test."""
    from ray import serve

    from serve_app.app import build_app

    log_file = tmp_path_factory.mktemp("request_log") / "requests.jsonl"
    args = {
        **live_app.args,
        "replica": {"num_cpus": 0.25, "graceful_shutdown_timeout_s": 1},
        "ingress": {"num_cpus": 0.05},
        "batcher": {"num_cpus": 0.05, "max_ongoing_requests": 1, "max_queued_requests": 1},
        "admission": {"max_requests": 2},
        "request_log": {"file": str(log_file), "include_text": True},
    }
    serve.run(build_app(args), name=SMALL_APP, route_prefix="/" + SMALL_APP)
    yield SmallApp(SMALL_APP, f"{live_app.base_url}/{SMALL_APP}/v1", log_file)  # as spare


@pytest.fixture(scope="session")
def replica_handle(live_app: LiveApp):
    from ray import serve

    from serve_app.app import REPLICA_NAME

    return serve.get_deployment_handle(REPLICA_NAME, app_name=APP_NAME)


@pytest.fixture(scope="session")
def client(live_app: LiveApp):
    import openai

    return openai.OpenAI(
        base_url=live_app.api_url, api_key=live_app.api_key, max_retries=0, timeout=60
    )


@pytest.fixture(scope="session")
def tokenizer():
    """The tiny model's tokenizer, as the ingress loads it."""
    from transformers import AutoTokenizer

    from serve_app.engine.model_path import resolve_model_dir

    return AutoTokenizer.from_pretrained(resolve_model_dir("tiny"))


@pytest.fixture(scope="session")
def engine(live_app: LiveApp):
    """The session app's engine settings in-process: the reference for greedy outputs."""
    from serve_app.engine.config import EngineConfig
    from serve_app.engine.engine import LLMEngine

    engine = LLMEngine(EngineConfig.from_dict(live_app.args["engine"] | {"model": "tiny"}))
    yield engine
    engine.shutdown()
