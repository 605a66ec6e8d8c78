"""What the blocking and the asyncio clients decide alike: specs from arguments or files,
when a wait is over, what a progress bar shows, and how an SSE stream splits into events."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union, cast

from .types import Pipeline, Task

TERMINAL = frozenset({"completed", "failed", "cancelled"})
"""Statuses a task or pipeline never leaves."""

SpecSource = Union[Mapping[str, Any], str, "os.PathLike[str]"]


def task_spec(spec: Optional[Mapping[str, Any]], fields: Mapping[str, Any]) -> Dict[str, Any]:
    """A task spec from a mapping, keyword fields, or both (the fields win)."""
    merged = dict(spec or {})
    merged.update({k: v for k, v in fields.items() if v is not None})
    if "name" not in merged or "script" not in merged:
        raise ValueError("a task needs a name and a script")
    return merged


def pipeline_spec(spec: SpecSource) -> Dict[str, Any]:
    """A pipeline spec from a mapping, or from the JSON file at a path."""
    if isinstance(spec, Mapping):
        return dict(spec)
    with open(spec, encoding="utf-8") as file:
        loaded = json.load(file)
    if not isinstance(loaded, dict):
        raise ValueError(f"{os.fspath(spec)}: a pipeline spec is a JSON object")
    return loaded


def task_done(task: Task, until_endpoint: bool) -> bool:
    return task.get("status") in TERMINAL or (until_endpoint and bool(task.get("endpoint")))


def log_ended(response: Any) -> bool:
    """Whether a log read says its task has ended (so nothing more will be written)."""
    return response.headers.get("x-task-status") in TERMINAL


def pipeline_done(pipeline: Pipeline) -> bool:
    return pipeline.get("status") not in ("running", "pending")


def task_bar_state(task: Task) -> Tuple[float, str]:
    """A task's progress as a fraction and the line beside the bar."""
    progress = task.get("progress") or {}
    fraction = progress.get("fraction")
    message = " ".join(
        part
        for part in (
            str(task.get("status", "")),
            progress.get("message") or "",
            f"serving {task['endpoint']}" if task.get("endpoint") else "",
        )
        if part
    )
    return (float(fraction) if fraction is not None else -1.0), message


def pipeline_bar_state(pipeline: Pipeline) -> Tuple[float, str]:
    """A pipeline's steps done (or serving) of all, and each step's status."""
    steps = pipeline.get("steps", [])
    done = sum(1 for step in steps if step.get("status") in ("completed", "serving", "skipped"))
    line = ", ".join(f"{step.get('name')}: {step.get('status')}" for step in steps)
    return (done / len(steps) if steps else -1.0), line


def show_progress(asked: Optional[bool]) -> bool:
    """A bar when asked, else where someone watches: a terminal or a notebook."""
    if asked is not None:
        return asked
    return sys.stderr.isatty() or "ipykernel" in sys.modules


class Bar:
    """A bar of 1000 steps drawn with tqdm (a notebook widget inside Jupyter), or nothing."""

    def __init__(self, shown: bool, label: str) -> None:
        self._bar: Any = None
        if shown:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=1000, desc=label, bar_format="{desc} {bar} {percentage:3.0f}% {postfix}")

    def update(self, fraction: float, message: str) -> None:
        if self._bar is None:
            return
        if fraction >= 0:
            self._bar.n = int(min(max(fraction, 0.0), 1.0) * 1000)
        self._bar.set_postfix_str(message, refresh=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class SseParser:
    """Server-sent events from a stream's lines, fed one at a time: ``feed`` answers an
    event (``{"event", "id", "data"}``) at the blank line that ends one."""

    def __init__(self) -> None:
        self._event: Dict[str, str] = {}
        self._data: List[str] = []

    def feed(self, line: str) -> Optional[Dict[str, str]]:
        if not line:
            if not (self._data or self._event):
                return None
            event, self._event = self._event, {}
            event["data"] = "\n".join(self._data)
            event.setdefault("event", "message")
            self._data = []
            return event
        if line.startswith(":"):
            return None  # a keep-alive comment
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name in ("event", "id"):
            self._event[name] = value
        return None


def files_under(path: Path, prefix: str) -> List[Tuple[Path, str]]:
    """A file, or every file under a folder, with the upload key each goes to."""
    prefix = prefix.strip("/")
    join = (lambda name: f"{prefix}/{name}") if prefix else (lambda name: name)
    if path.is_file():
        return [(path, join(path.name))]
    found = sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return [(p, join(p.relative_to(path).as_posix())) for p in found]


def chunks(path: Path, bar: Bar, sent: List[int], total: int, size: int = 1 << 20) -> Iterator[bytes]:
    """A file's bytes in chunks, moving ``bar`` as they go (``sent`` counts across files)."""
    with open(path, "rb") as file:
        while True:
            chunk = file.read(size)
            if not chunk:
                return
            sent[0] += len(chunk)
            bar.update(sent[0] / total if total else 1.0, f"{sent[0] >> 20} of {total >> 20} MiB")
            yield chunk


def as_task(value: Any) -> Task:
    return cast(Task, value)


def as_pipeline(value: Any) -> Pipeline:
    return cast(Pipeline, value)
