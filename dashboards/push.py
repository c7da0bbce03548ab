"""Upload the committed dashboards to a Grafana with grafana-client.

    python -m dashboards.push --url https://grafana.example.com --token "$GRAFANA_TOKEN"

The token is a Grafana service-account token (Editor role); `--token` defaults to
$GRAFANA_TOKEN. Dashboards go into one folder (created when missing) and overwrite earlier
versions with the same uid, so pushing again after `python -m dashboards.generate` updates them.
An unreachable Grafana or a refused token is one line naming the URL and the fix (the
traceback with SERVE_APP_DEBUG=1).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from grafana_client import GrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException, GrafanaUnauthorizedError

from serve_app.cli_errors import report

JSON_DIR = Path(__file__).resolve().parent / "json"
FOLDER_UID = "serve-app"
FOLDER_TITLE = "serve-app"
PROG = "dashboards.push"


def ensure_folder(api: GrafanaApi) -> str:
    try:
        return api.folder.get_folder(FOLDER_UID)["uid"]
    except GrafanaClientError as error:
        if error.status_code != 404:
            raise
    return api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)["uid"]


def push(url: str, token: str, json_dir: Path = JSON_DIR) -> list[str]:
    """Upload every dashboard in `json_dir`; returns the uids uploaded."""
    api = GrafanaApi.from_url(url, credential=token, timeout=30)
    folder_uid = ensure_folder(api)
    uploaded = []
    for path in sorted(json_dir.glob("*.json")):
        dashboard = json.loads(path.read_text())
        dashboard.pop("id", None)  # Grafana assigns ids; the uid identifies the dashboard
        api.dashboard.update_dashboard(
            {"dashboard": dashboard, "folderUid": folder_uid, "overwrite": True}
        )
        uploaded.append(dashboard["uid"])
    return uploaded


class PushError(RuntimeError):
    """Grafana at --url could not be reached or refused the upload."""


def push_error(url: str, error: BaseException) -> PushError:
    """`error` (its cause, for SERVE_APP_DEBUG's traceback) as one line: the URL, what went
    wrong and what to change."""
    failure = PushError(describe_failure(url, error))
    failure.__cause__ = error
    return failure


def describe_failure(url: str, error: BaseException) -> str:
    if isinstance(error, GrafanaUnauthorizedError):
        return (
            f"Grafana at {url} refused the token (401): pass --token (or $GRAFANA_TOKEN), a "
            "service-account token with the Editor role"
        )
    if isinstance(error, GrafanaException):
        return f"Grafana at {url} answered {error.status_code}: {error.message}"
    # The HTTP client's message nests three exceptions; its root cause is the useful part.
    root = re.search(r"\[Errno -?\d+\] ([^'\")]+)|(Failed to resolve '[^']+')", str(error))
    reason = (root.group(1) or root.group(2)).strip() if root else type(error).__name__
    return (
        f"cannot reach Grafana at {url} ({reason}): check --url (scheme, host and port of "
        "Grafana's web address) and that Grafana is up"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Upload serve-app's dashboards to Grafana.")
    parser.add_argument("--url", required=True, help="Grafana's base URL")
    parser.add_argument("--token", default=os.environ.get("GRAFANA_TOKEN"))
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("--token or $GRAFANA_TOKEN is required (a service-account token)")
    try:
        uploaded = push(args.url, args.token)
    except (OSError, GrafanaException) as error:  # the client's ConnectionError is an OSError
        return report(PROG, push_error(args.url, error))
    for uid in uploaded:
        print(f"uploaded {uid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
