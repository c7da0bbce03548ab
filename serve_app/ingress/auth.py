"""Bearer-token API keys: loaded from an environment variable and/or a file, compared in
constant time. No keys configured means auth is off."""

from __future__ import annotations

import hmac
import os

from serve_app.config import AuthSettings
from serve_app.ingress.errors import APIError


class ApiKeys:
    def __init__(self, keys: list[str]) -> None:
        self._keys = [key.encode() for key in keys if key]

    @classmethod
    def from_settings(cls, settings: AuthSettings) -> ApiKeys:
        keys: list[str] = []
        if settings.api_keys_env:
            keys += [key.strip() for key in os.environ.get(settings.api_keys_env, "").split(",")]
        if settings.api_keys_file is not None:
            lines = settings.api_keys_file.read_text().splitlines()
            keys += [line.strip() for line in lines if not line.lstrip().startswith("#")]
        return cls([key for key in keys if key])

    @property
    def keys(self) -> list[str]:
        """The configured keys (for the request log's redactor, which masks them)."""
        return [key.decode() for key in self._keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, authorization: str | None) -> None:
        """Raise a 401 APIError unless `authorization` is `Bearer <a configured key>`."""
        if not self.enabled:
            return
        scheme, _, token = (authorization or "").partition(" ")
        candidate = token.strip().encode()
        # Compare against every key so the time taken does not reveal which one matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        if scheme.lower() != "bearer" or not matched:
            raise APIError(
                401,
                "invalid or missing API key: send `Authorization: Bearer <key>`",
                code="invalid_api_key",
            )
