"""The README's "Serving over HTTP" examples, run as written against the live app (only the
port differs: the test app does not take :8000 from a developer's running `make run`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]

README = Path(__file__).parents[2] / "README.md"
DOCUMENTED_ADDRESS = "127.0.0.1:8000"


def section_blocks(language: str) -> list[str]:
    text = README.read_text()
    section = text.split("## Serving over HTTP", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def run_example(command: list[str], live_app) -> str:
    env = {**os.environ, "OPENAI_API_KEY": live_app.api_key}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_readme_curl_works(live_app):
    [script] = section_blocks("bash")
    assert DOCUMENTED_ADDRESS in script
    address = live_app.base_url.removeprefix("http://")
    output = run_example(["bash", "-c", script.replace(DOCUMENTED_ADDRESS, address)], live_app)
    response = json.loads(output)
    assert response["object"] == "text_completion"
    assert response["choices"][0]["finish_reason"] in ("stop", "length")
    assert response["usage"]["completion_tokens"] >= 1


def test_readme_openai_sdk_example_works(live_app):
    [script] = section_blocks("python")
    assert DOCUMENTED_ADDRESS in script
    address = live_app.base_url.removeprefix("http://")
    output = run_example(
        [sys.executable, "-c", script.replace(DOCUMENTED_ADDRESS, address)], live_app
    )
    assert output.endswith("\n")


def test_make_run_serves_the_dev_config():
    makefile = (Path(__file__).parents[2] / "Makefile").read_text()
    run_recipe = makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0]
    assert "serve run deployments/dev.yaml" in run_recipe
