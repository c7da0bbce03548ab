"""The start-up warning: a Serve port reachable beyond loopback while no API key is set,
with the fix that closes each port."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serve_app.config import AuthSettings
from serve_app.exposure import exposed_ports, exposure_warning

GRPC_ON = {"port": 9000, "grpc_servicer_functions": ["x.add_Servicer_to_server"]}
LOOPBACK_HTTP = {"host": "127.0.0.1", "port": 8000}
DEFAULT_AUTH = AuthSettings()


def names(http_options: dict, grpc_options: dict) -> list[str]:
    return [port.what for port in exposed_ports(http_options, grpc_options)]


def test_loopback_http_without_grpc_exposes_nothing():
    assert names(LOOPBACK_HTTP, {}) == []
    assert names({"host": "localhost"}, {"port": 9000}) == []  # no services: no gRPC
    assert exposure_warning(LOOPBACK_HTTP, {}, DEFAULT_AUTH, keys_enabled=False) is None


def test_grpc_and_non_loopback_http_are_exposed():
    assert names(LOOPBACK_HTTP, GRPC_ON) == ["gRPC ([::]:9000, all interfaces)"]
    assert names({}, {}) == ["HTTP (0.0.0.0:8000)"]  # a config file's default host
    assert names({"host": "10.0.0.5", "port": 80}, {}) == ["HTTP (10.0.0.5:80)"]


def test_the_warning_names_the_ports_and_goes_away_with_api_keys():
    auth = AuthSettings(api_keys_env="TEST_KEYS")
    warning = exposure_warning(LOOPBACK_HTTP, GRPC_ON, auth, keys_enabled=False)
    assert warning is not None
    assert warning.startswith("EXPOSED WITHOUT API KEYS")
    assert "gRPC ([::]:9000, all interfaces)" in warning
    assert "TEST_KEYS in the serving processes' environment" in warning
    assert "auth.api_keys_file" in warning
    assert exposure_warning(LOOPBACK_HTTP, GRPC_ON, auth, keys_enabled=True) is None


def test_each_exposed_port_gets_the_fix_that_closes_it():
    """Before: one piece of advice for all, "bind HTTP to 127.0.0.1", also when only gRPC
    was exposed, where binding HTTP changes nothing."""
    grpc_only = exposure_warning(LOOPBACK_HTTP, GRPC_ON, DEFAULT_AUTH, keys_enabled=False)
    assert "gRPC ([::]:9000, all interfaces): Ray Serve's gRPC proxy has no host option" in (
        grpc_only
    )
    assert "leave grpc_options out of the Serve config" in grpc_only
    assert "firewall port 9000" in grpc_only
    assert "http_options.host" not in grpc_only and "HTTP" not in grpc_only

    both = exposure_warning({"host": "0.0.0.0", "port": 8001}, GRPC_ON, DEFAULT_AUTH, False)
    assert "HTTP (0.0.0.0:8001): set http_options.host: 127.0.0.1; gRPC" in both


@pytest.mark.parametrize("name", ["dev.yaml", "dev-tp2.yaml"])
def test_the_dev_configs_expose_nothing(name):
    config = yaml.safe_load((Path(__file__).parents[2] / "deployments" / name).read_text())
    assert exposed_ports(config["http_options"], config.get("grpc_options") or {}) == []
