"""``lancer.task`` outside a task, and the lines it writes inside one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lancer


def test_outside_a_task_the_helper_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LANCER_TASK_ID", "LANCER_PROGRESS_FILE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(lancer.NotInATask, match="LANCER_TASK_ID"):
        _ = lancer.task.id
    with pytest.raises(lancer.NotInATask, match="LANCER_PROGRESS_FILE"):
        lancer.task.report(fraction=0.5)


def test_reports_and_endpoints_are_whole_json_lines(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    progress = tmp_path / "progress.jsonl"
    monkeypatch.setenv("LANCER_PROGRESS_FILE", str(progress))
    monkeypatch.setenv("LANCER_SERVE_HOST", "127.0.0.1")
    lancer.task.report(fraction=0.25, message="epoch 1/4", loss=0.5, accuracy=0.9)
    assert lancer.task.serve(8123) == "http://127.0.0.1:8123"
    lines = [json.loads(line) for line in progress.read_text().splitlines()]
    assert lines == [
        {"fraction": 0.25, "message": "epoch 1/4", "metrics": {"loss": 0.5, "accuracy": 0.9}},
        {"endpoint": "http://127.0.0.1:8123"},
    ]
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError):
            lancer.task.report(fraction=bad)
    with pytest.raises(ValueError):
        lancer.task.report(loss=float("inf"))
    with pytest.raises(ValueError):
        lancer.task.serve(0)
    assert len(progress.read_text().splitlines()) == 2, "a refused report writes nothing"
