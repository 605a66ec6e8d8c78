"""A real ``lancer serve`` for the SDK's tests: port 0, its own lake, task table and scripts
folder, keyed for two tenants, with this interpreter (where the SDK is installed) running
the scripts, so the scripts' ``lancer.task`` is the package under test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator, Optional

import pytest

import lancer

KEY = "sdk-acme-key-0001"
OTHER_KEY = "sdk-other-key-0001"

SCRIPTS = {
    # Writes `rows` numbers as a Lance dataset, reporting progress through lancer.task.
    "make_numbers.py": '''
import lance, pyarrow as pa
from lancer import task

def run(input_path, output_path, params):
    rows = params["rows"]
    for step in range(3):
        task.report(fraction=(step + 1) / 3, message=f"step {step + 1}/3", loss=1.0 / (step + 1))
    print(f"writing {rows} rows for attempt {task.attempt}", flush=True)
    table = pa.table({"n": list(range(rows))})
    lance.write_dataset(table, output_path, mode="overwrite",
                        storage_options=task.storage_options or None)
    return {"rows": rows, "task": task.id, "checkpoints": task.checkpoint_dir}
''',
    # Runs until cancelled, printing a line a tenth of a second.
    "slow.py": '''
import time

def run(input_path, output_path, params):
    for step in range(params.get("steps", 600)):
        print(f"tick {step}", flush=True)
        time.sleep(0.1)
    return {}
''',
    # Serves {"hello": "sdk"} and reports its endpoint through lancer.task.serve.
    "serve.py": '''
import json, os
from http.server import BaseHTTPRequestHandler, HTTPServer
from lancer import task

class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"hello": "sdk", "path": self.path}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

def run(input_path, output_path, params):
    server = HTTPServer((os.environ["LANCER_SERVE_HOST"], 0), Hello)
    task.serve(server.server_address[1])
    server.serve_forever()
''',
    "fails.py": '''
def run(input_path, output_path, params):
    raise RuntimeError("this script fails on purpose")
''',
}


def binaries() -> Path:
    """The folder of the built lancer binaries."""
    if os.environ.get("LANCER_BIN"):
        return Path(os.environ["LANCER_BIN"])
    target = os.environ.get("CARGO_TARGET_DIR") or str(Path.home() / ".cache" / "lancer-target")
    return Path(target) / "debug"


REPO = Path(__file__).resolve().parents[3]


class Server:
    """``lancer serve`` in ``root``: keyed, running the test scripts with this interpreter;
    or, with ``scripts``, open (no keys) on that scripts folder with ``python``."""

    def __init__(self, root: Path, scripts: Optional[Path] = None, python: Optional[str] = None) -> None:
        if scripts is None:
            scripts = root / "scripts"
            scripts.mkdir()
            for name, body in SCRIPTS.items():
                (scripts / name).write_text(body)
            (scripts / "lancer-scripts.json").write_text(json.dumps({"scripts": sorted(SCRIPTS)}))
        self.lake = root / "lake"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LANCER_")}
        env.update(LANCER_PYTHON=python or sys.executable, LANCER_LEASE_SECS="5", LANCER_CANCEL_GRACE_SECS="2")
        if python is None:
            env["LANCER_API_KEYS"] = f"{KEY}=acme,{OTHER_KEY}=other"
        command = [str(binaries() / "lancer"), "serve", "--port", "0", "--host", "127.0.0.1",
                   "--lake", str(self.lake), "--db", str(root / "lancer.db"), "--scripts", str(scripts)]
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
        self.url = self._listening()
        # The server keeps writing its stdout; drain it so it never blocks.
        threading.Thread(target=self.process.stdout.read, daemon=True).start()  # type: ignore[union-attr]

    def _listening(self) -> str:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("lancer listening on "):
                return line.split("lancer listening on ", 1)[1].strip()
        raise RuntimeError(f"lancer serve exited with {self.process.wait()} before listening")

    def client(self, key: str = KEY) -> lancer.Client:
        return lancer.Client(self.url, api_key=key)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("lancer"))
    yield running
    running.stop()


@pytest.fixture()
def client(server: Server) -> Iterator[lancer.Client]:
    with server.client() as made:
        yield made
