"""The start-up warning: a Serve port reachable beyond loopback while no API key is set."""

from __future__ import annotations

import pytest

from serve_app.config import AuthSettings
from serve_app.exposure import exposed_ports, exposure_warning

GRPC_ON = {"port": 9000, "grpc_servicer_functions": ["x.add_Servicer_to_server"]}
LOOPBACK_HTTP = {"host": "127.0.0.1", "port": 8000}


def test_loopback_http_without_grpc_exposes_nothing():
    assert exposed_ports(LOOPBACK_HTTP, {}) == []
    assert exposed_ports({"host": "localhost"}, {"port": 9000}) == []  # no services: no gRPC
    assert exposure_warning(LOOPBACK_HTTP, {}, AuthSettings(api_keys_env=None)) is None


def test_grpc_and_non_loopback_http_are_exposed():
    assert exposed_ports(LOOPBACK_HTTP, GRPC_ON) == ["gRPC ([::]:9000, all interfaces)"]
    assert exposed_ports({}, {}) == ["HTTP (0.0.0.0:8000)"]  # a config file's default host
    assert exposed_ports({"host": "10.0.0.5", "port": 80}, {}) == ["HTTP (10.0.0.5:80)"]


def test_the_warning_names_the_ports_and_goes_away_with_api_keys(monkeypatch):
    monkeypatch.delenv("TEST_KEYS", raising=False)
    auth = AuthSettings(api_keys_env="TEST_KEYS")
    warning = exposure_warning(LOOPBACK_HTTP, GRPC_ON, auth)
    assert warning is not None
    assert warning.startswith("EXPOSED WITHOUT API KEYS: gRPC ([::]:9000")
    assert "TEST_KEYS" in warning
    monkeypatch.setenv("TEST_KEYS", "k1")
    assert exposure_warning(LOOPBACK_HTTP, GRPC_ON, auth) is None


@pytest.mark.parametrize("name", ["dev.yaml", "dev-tp2.yaml"])
def test_the_dev_configs_expose_nothing(name):
    from pathlib import Path

    import yaml

    config = yaml.safe_load((Path(__file__).parents[2] / "deployments" / name).read_text())
    assert exposed_ports(config["http_options"], config.get("grpc_options") or {}) == []
