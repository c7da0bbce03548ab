"""API keys: from an environment variable and a file; only `Bearer <key>` passes."""

from __future__ import annotations

import pytest

from serve_app.config import AuthSettings
from serve_app.ingress.auth import ApiKeys
from serve_app.ingress.errors import APIError


def test_keys_from_env_and_file(tmp_path, monkeypatch):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# comment\nfile-key\n\n")
    monkeypatch.setenv("MY_KEYS", "env-a, env-b")
    keys = ApiKeys.from_settings(AuthSettings(api_keys_env="MY_KEYS", api_keys_file=keys_file))
    for key in ("env-a", "env-b", "file-key"):
        keys.check(f"Bearer {key}")
    for header in (None, "", "Bearer", "Bearer wrong", "Basic file-key", "Bearer # comment"):
        with pytest.raises(APIError) as raised:
            keys.check(header)
        assert raised.value.status == 401


def test_no_keys_means_auth_is_off(monkeypatch):
    monkeypatch.delenv("SERVE_APP_API_KEYS", raising=False)
    keys = ApiKeys.from_settings(AuthSettings())
    assert not keys.enabled
    keys.check(None)
