"""Inside a running task script: who the task is, and its progress and endpoint reports.

``lancer.task`` reads the run contract's environment (``LANCER_TASK_ID``, ...) when it is
used, and writes the progress lines the runner reads from ``LANCER_PROGRESS_FILE``::

    from lancer import task

    def run(input_path, output_path, params):
        for epoch in range(3):
            ...
            task.report(fraction=(epoch + 1) / 3, message=f"epoch {epoch + 1}/3", loss=loss)
        return {"epochs": 3}

Outside a task each of these raises :class:`NotInATask`, naming the variable it lacks.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Optional

from .errors import LancerError


class NotInATask(LancerError):
    """Raised by ``lancer.task`` outside a script that lancer started."""

    def __init__(self, variable: str) -> None:
        super().__init__("NOT_IN_A_TASK", f"{variable} is not set: lancer.task works inside a task's script")


class _Task:
    def _var(self, name: str) -> str:
        value = os.environ.get(name)
        if value is None:
            raise NotInATask(name)
        return value

    @property
    def id(self) -> str:
        """The task's id."""
        return self._var("LANCER_TASK_ID")

    @property
    def attempt(self) -> int:
        """Which attempt this is, from 1."""
        return int(self._var("LANCER_ATTEMPT"))

    @property
    def input_version(self) -> Optional[int]:
        """The Lance version of the input to read; ``None`` when the input is no dataset."""
        self._var("LANCER_TASK_ID")
        value = os.environ.get("LANCER_INPUT_VERSION")
        return int(value) if value else None

    @property
    def checkpoint_dir(self) -> str:
        """A folder (or ``s3://`` prefix) kept across the task's attempts: resume from it."""
        return self._var("LANCER_CHECKPOINT_DIR")

    @property
    def lake(self) -> str:
        """The tenant's lake root, where the task's input and output live."""
        return self._var("LANCER_LAKE")

    @property
    def storage_options(self) -> Dict[str, str]:
        """The lake's object-store options for pylance (empty on a local lake)."""
        loaded = json.loads(os.environ.get("LANCER_STORAGE_OPTIONS") or "{}")
        return {str(k): str(v) for k, v in (loaded or {}).items()}

    def report(self, fraction: Optional[float] = None, message: Optional[str] = None, **metrics: Any) -> None:
        """Reports progress: a fraction from 0 to 1, a line to show, and any metrics (the
        console charts each numeric one over the run)."""
        if fraction is not None and not (math.isfinite(fraction) and 0.0 <= fraction <= 1.0):
            raise ValueError(f"fraction must be between 0 and 1, not {fraction}")
        line: Dict[str, Any] = {}
        if fraction is not None:
            line["fraction"] = fraction
        if message is not None:
            line["message"] = message
        if metrics:
            line["metrics"] = metrics
        self._write(line)

    def serve(self, port: int, host: Optional[str] = None) -> str:
        """Reports that the script serves HTTP on ``port`` (bound to ``LANCER_SERVE_HOST``):
        from then on the API's proxy reaches it. Returns the endpoint's URL."""
        if not 0 < port < 65536:
            raise ValueError(f"port must be 1-65535, not {port}")
        bound = host or os.environ.get("LANCER_SERVE_HOST") or "127.0.0.1"
        url = f"http://{bound}:{port}"
        self._write({"endpoint": url})
        return url

    def _write(self, line: Dict[str, Any]) -> None:
        path = self._var("LANCER_PROGRESS_FILE")
        text = json.dumps(line, allow_nan=False, default=str)
        # One whole line per write: the runner reads only complete lines.
        with open(path, "a", encoding="utf-8") as progress:
            progress.write(text + "\n")


task = _Task()
"""The running task, for scripts: ``lancer.task.report(...)``."""
