"""The auth an ingress would have, resolved as the ingress resolves it, summed up without
its keys; and the refusal of keys that are set only in the deploying shell."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.auth_state import AuthState, KeySource, resolve_auth, shell_mismatch
from serve_app.config import AuthSettings

SALT = b"0123456789abcdef"


def key_file(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "keys"
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_keys_from_a_file_are_counted_and_named(tmp_path, monkeypatch):
    monkeypatch.delenv("TEST_KEYS", raising=False)
    path = key_file(tmp_path, "# the team's keys", "sk-a", "", "sk-b")
    state = resolve_auth(AuthSettings(api_keys_env="TEST_KEYS", api_keys_file=path), SALT)
    assert state.enabled and state.num_keys == 2
    assert state.describe() == f"auth ON (2 keys from file {path})"
    assert "sk-a" not in repr(state)  # a summary: it crosses to the preflight


def test_keys_from_both_sources_and_none(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_KEYS", "sk-1, sk-2,")
    path = key_file(tmp_path, "sk-3")
    both = resolve_auth(AuthSettings(api_keys_env="TEST_KEYS", api_keys_file=path), SALT)
    assert both.describe() == f"auth ON (3 keys: 2 from env TEST_KEYS, 1 from file {path})"
    monkeypatch.delenv("TEST_KEYS")
    none = resolve_auth(AuthSettings(api_keys_env="TEST_KEYS"), SALT)
    assert not none.enabled
    assert none.describe() == "auth OFF (no API key in env TEST_KEYS)"
    unset = resolve_auth(AuthSettings(api_keys_env=None), SALT)
    assert unset.describe() == "auth OFF (no API key in any source: auth sets none)"


def test_an_unreadable_key_file_fails_as_in_the_ingress(tmp_path):
    with pytest.raises(FileNotFoundError):
        resolve_auth(AuthSettings(api_keys_file=tmp_path / "missing"), SALT)


def serving(monkeypatch, value: str | None, settings: AuthSettings) -> AuthState:
    """The state a serving process with `value` in TEST_KEYS reports."""
    if value is None:
        monkeypatch.delenv("TEST_KEYS", raising=False)
    else:
        monkeypatch.setenv("TEST_KEYS", value)
    return resolve_auth(settings, SALT)


def test_keys_set_only_in_the_deploying_shell_are_refused_with_where_to_set_them(monkeypatch):
    auth = AuthSettings(api_keys_env="TEST_KEYS")
    without = serving(monkeypatch, None, auth)
    other = serving(monkeypatch, "sk-old", auth)
    same = serving(monkeypatch, "sk-new", auth)

    monkeypatch.setenv("TEST_KEYS", "sk-new")  # the deploying shell
    refusal = shell_mismatch(auth, without, SALT)
    assert refusal is not None
    assert refusal.startswith("TEST_KEYS is set in this shell, but the serving processes do")
    for where in ("environment of `make run`", "runtime_env env_vars", "auth.api_keys_file"):
        assert where in refusal
    assert "sk-new" not in refusal
    assert "see another value (1 key)" in shell_mismatch(auth, other, SALT)
    assert shell_mismatch(auth, same, SALT) is None

    monkeypatch.delenv("TEST_KEYS")  # nothing in the shell: nothing to refuse
    assert shell_mismatch(auth, without, SALT) is None


def test_the_digest_depends_on_the_salt(monkeypatch):
    monkeypatch.setenv("TEST_KEYS", "sk-1")
    auth = AuthSettings(api_keys_env="TEST_KEYS")
    assert resolve_auth(auth, SALT).env_digest != resolve_auth(auth, b"another salt").env_digest
    assert resolve_auth(auth, SALT).sources == (KeySource("env TEST_KEYS", 1),)
