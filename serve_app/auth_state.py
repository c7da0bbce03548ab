"""The API keys an application will have, found where the ingress reads them: in a Ray
worker on the cluster, not in the shell that deploys.

The ingress resolves its keys when it starts (`ApiKeys.from_settings`, in its replica
process). `auth.api_keys_env` names a variable of THAT process's environment: the one the
cluster was started with (`make run`'s shell, a node's) plus the application's
`runtime_env.env_vars`; `auth.api_keys_file` is read on the ingress's node. A variable set
only in the shell of `make deploy` / `serve deploy` never gets there, so the app would serve
without the keys its deployer meant. The preflight therefore resolves the keys in a small
Ray task started as the ingress is (the application's env_vars; with `placement.enabled`,
the ingress's node resource) and gets back counts and sources, never a key. To tell whether
the deploying shell's variable is the one the serving side has, each side sends a digest of
it keyed with a random salt made for this run.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError

from serve_app.config import AppConfig, AuthSettings
from serve_app.exposure import KEYS_ADVICE, exposure_warning
from serve_app.ingress.auth import ApiKeys
from serve_app.placement import FRONTEND_RESOURCE_AMOUNT

TASK_TIMEOUT_S = 60.0  # a fresh worker on a busy 2-core box starts in seconds
SALT_BYTES = 16


@dataclass(frozen=True, slots=True)
class KeySource:
    name: str  # `env SERVE_APP_API_KEYS`, `file /etc/serve-app/keys`
    num_keys: int


@dataclass(frozen=True, slots=True)
class AuthState:
    """What an ingress would have: how many keys, from which configured source."""

    num_keys: int
    sources: tuple[KeySource, ...]  # every configured source, with or without keys
    env_digest: str | None  # auth.api_keys_env's keys under the caller's salt

    @property
    def enabled(self) -> bool:
        return self.num_keys > 0

    def describe(self) -> str:
        """`auth ON (2 keys from file /x)` / `auth OFF (no API key in env X)`."""
        if not self.enabled:
            looked = " or ".join(source.name for source in self.sources)
            return f"auth OFF (no API key in {looked or 'any source: auth sets none'})"
        found = [source for source in self.sources if source.num_keys]
        if len(found) == 1:
            return f"auth ON ({_keys(self.num_keys)} from {found[0].name})"
        parts = ", ".join(f"{source.num_keys} from {source.name}" for source in found)
        return f"auth ON ({_keys(self.num_keys)}: {parts})"


def _keys(count: int) -> str:
    return f"{count} key" + ("s" if count != 1 else "")


def env_keys_digest(settings: AuthSettings, salt: bytes) -> tuple[int, str | None]:
    """How many keys `auth.api_keys_env` holds in this process, and their salted digest."""
    if not settings.api_keys_env:
        return 0, None
    keys = ApiKeys.from_settings(AuthSettings(api_keys_env=settings.api_keys_env)).keys
    digest = hmac.new(salt, "\n".join(sorted(keys)).encode(), hashlib.sha256).hexdigest()
    return len(keys), digest


def resolve_auth(settings: AuthSettings, salt: bytes) -> AuthState:
    """The keys as the ingress resolves them in this process (an unreadable
    `auth.api_keys_file` raises OSError, as it fails the ingress)."""
    num_keys = len(ApiKeys.from_settings(settings).keys)
    num_env_keys, digest = env_keys_digest(settings, salt)
    sources = []
    if settings.api_keys_env:
        sources.append(KeySource(f"env {settings.api_keys_env}", num_env_keys))
    if settings.api_keys_file is not None:
        sources.append(KeySource(f"file {settings.api_keys_file}", num_keys - num_env_keys))
    return AuthState(num_keys, tuple(sources), digest)


@ray.remote(num_cpus=0, max_retries=0)
def _resolve_in_worker(settings: AuthSettings, salt: bytes) -> AuthState | str:
    try:
        return resolve_auth(settings, salt)
    except (OSError, ValueError) as error:  # missing, unreadable or not text
        return f"auth.api_keys_file: {error}"


def serving_auth_state(config: AppConfig, env_vars: dict[str, str], salt: bytes) -> AuthState | str:
    """The ingress's auth as a Ray worker of the connected cluster resolves it: the state,
    or why the ingress could not read its keys. Raises GetTimeoutError when no worker ran."""
    options: dict[str, Any] = {"runtime_env": {"env_vars": env_vars}} if env_vars else {}
    if config.placement.enabled:  # on a node that may run the ingress
        options["resources"] = {config.placement.frontend_resource: FRONTEND_RESOURCE_AMOUNT}
    ref = _resolve_in_worker.options(**options).remote(config.auth, salt)
    try:
        return ray.get(ref, timeout=TASK_TIMEOUT_S)
    except GetTimeoutError:
        ray.cancel(ref, force=True)
        raise


def shell_mismatch(auth: AuthSettings, state: AuthState, salt: bytes) -> str | None:
    """Why keys in this shell's `auth.api_keys_env` would not apply, or None."""
    num_local, digest = env_keys_digest(auth, salt)
    if num_local == 0 or digest == state.env_digest:
        return None
    variable = auth.api_keys_env
    [serving] = [source for source in state.sources if source.name == f"env {variable}"]
    seen = (
        "the serving processes do not see it"
        if serving.num_keys == 0
        else f"the serving processes see another value ({_keys(serving.num_keys)})"
    )
    return (
        f"{variable} is set in this shell, but {seen}, so the application would not use "
        f"these keys ({state.describe()}). The ingress reads it on the cluster: set it in "
        f"the environment of `make run` (the cluster's processes inherit it), or in the "
        f"application's runtime_env env_vars in the Serve config, or put the keys in a file "
        f"and set auth.api_keys_file ({KEYS_ADVICE})"
    )


@contextmanager
def _connected() -> Iterator[bool]:
    """Connected to the cluster at RAY_ADDRESS (as `make run` / `make deploy` set it);
    False when there is none to ask."""
    if ray.is_initialized():
        yield True
        return
    address = os.environ.get("RAY_ADDRESS")
    if not address:
        yield False
        return
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    try:
        yield True
    finally:
        ray.shutdown()


def serving_auth_problems(
    path: Path,
    serve_config: dict[str, Any],
    applications: list[tuple[str, AppConfig, dict[str, str]]],
) -> list[str]:
    """Print each application's auth as its serving processes will have it, and the
    exposure warning from that; return the problems: an API key file the serving side
    cannot read, or keys in this shell's variable that the serving side would not use.

    `applications`: (name, config, the application's runtime_env env_vars) of each
    serve_app application of the Serve config at `path`.
    """
    if not applications:
        return []
    salt = secrets.token_bytes(SALT_BYTES)
    problems = []
    with _connected() as on_cluster:
        for name, config, env_vars in applications:
            where = f"{path} application {name!r}"
            if not on_cluster:
                print(
                    f"preflight: application {name!r}: auth not checked on the serving "
                    "side (no RAY_ADDRESS names the cluster)"
                )
                continue
            try:
                state = serving_auth_state(config, env_vars, salt)
            except GetTimeoutError:
                print(
                    f"preflight: application {name!r}: auth not checked: no Ray worker "
                    f"ran the check within {TASK_TIMEOUT_S:.0f} s"
                )
                continue
            if isinstance(state, str):
                problems.append(f"{where}: {state} (read by the ingress on the cluster)")
                continue
            print(f"preflight: application {name!r}: {state.describe()}")
            mismatch = shell_mismatch(config.auth, state, salt)
            if mismatch:
                problems.append(f"{where}: {mismatch}")
            warning = exposure_warning(
                serve_config.get("http_options") or {},
                serve_config.get("grpc_options") or {},
                config.auth,
                state.enabled,
            )
            if warning:
                print(f"WARNING: {where}: {warning}", file=sys.stderr)
    return problems
