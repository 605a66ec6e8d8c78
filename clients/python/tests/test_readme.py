"""The README's Python example, run as written against a server on this repository's
scripts, with the digits fetched into its lake."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from conftest import REPO, Server


def readme_python_block() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n### From Python\n", 1)[1]
    return section.split("```python\n", 1)[1].split("\n```", 1)[0]


@pytest.fixture(scope="module")
def mnist_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("readme")
    subprocess.run([str(REPO / "mnist" / "fetch-data"), "--lake", str(root / "lake")], check=True)
    python = str(REPO / ".venv" / "bin" / "python")
    server = Server(root, scripts=REPO, python=python if Path(python).exists() else "python3")
    yield server
    server.stop()


def test_the_readmes_python_example_trains_and_opens_the_digits(mnist_server: Server) -> None:
    code = readme_python_block()
    env = dict(os.environ, LANCER_URL=mnist_server.url)
    env.pop("LANCER_API_KEY", None)
    ran = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    accuracy = float(ran.stdout.split("test accuracy", 1)[1].split()[0])
    assert accuracy > 0.8, ran.stdout
    assert "10000 digits;" in ran.stdout, ran.stdout
