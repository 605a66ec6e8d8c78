"""The blocking client against a real ``lancer serve``: every resource, its errors, paging,
idempotent submits, and the script helper inside real tasks."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

import lancer
from conftest import OTHER_KEY, Server


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_a_submitted_task_is_waited_for_and_its_helper_reports_arrive(client: lancer.Client) -> None:
    output = unique("numbers")
    task = client.tasks.submit(name="numbers", script="make_numbers.py", output=output, params={"rows": 7})
    assert task["status"] == "pending"
    done = client.tasks.wait(task["id"], timeout=120, progress=False)
    assert done["status"] == "completed", done
    assert done["result"]["rows"] == 7
    assert done["result"]["task"] == task["id"], "lancer.task.id is the task's id"
    assert done["result"]["checkpoints"].endswith(f"checkpoints/tasks/{task['id']}")
    history = client.tasks.progress(task["id"])
    assert history["task_id"] == task["id"] and history["attempt"] == 1
    fractions = [point.get("fraction") for point in history["points"]]
    assert fractions[-1] == 1.0, history
    assert history["points"][-1]["metrics"]["loss"] == pytest.approx(1 / 3)
    log = "".join(client.tasks.logs(task["id"]))
    assert "writing 7 rows for attempt 1" in log


def test_errors_are_exceptions_carrying_the_apis_code(server: Server, client: lancer.Client) -> None:
    with pytest.raises(lancer.NotFound) as missing:
        client.tasks.get(str(uuid.uuid4()))
    assert missing.value.code == "TASK_NOT_FOUND" and missing.value.status == 404
    with pytest.raises(lancer.InvalidRequest) as unregistered:
        client.tasks.submit(name="nope", script="not-registered.py")
    assert "not-registered.py" in unregistered.value.message
    done = client.tasks.wait(client.tasks.submit(name="fails", script="fails.py")["id"], timeout=60, progress=False)
    assert done["status"] == "failed" and "on purpose" in done["error"]["message"]
    with pytest.raises(lancer.Conflict):
        client.tasks.cancel(done["id"])
    with pytest.raises(lancer.Unauthorized):
        lancer.Client(server.url, api_key="").tasks.get(done["id"])
    with pytest.raises(lancer.NotFound):
        server.client(OTHER_KEY).tasks.get(done["id"])


def test_a_submit_with_one_idempotency_key_makes_one_task(client: lancer.Client) -> None:
    key = unique("once")
    spec = {"name": "numbers", "script": "make_numbers.py", "output": unique("twice"), "params": {"rows": 1}}
    first = client.tasks.submit(spec, idempotency_key=key)
    again = client.tasks.submit(spec, idempotency_key=key)
    assert first["id"] == again["id"]
    client.tasks.wait(first["id"], timeout=120, progress=False)


def test_listing_walks_every_page_newest_first(client: lancer.Client) -> None:
    name = unique("paged")
    ids = [client.tasks.submit(name=name, script="fails.py")["id"] for _ in range(3)]
    listed = [t["id"] for t in client.tasks.list(name=name, page_size=1)]
    assert listed == list(reversed(ids))
    for task_id in ids:
        client.tasks.wait(task_id, timeout=60, progress=False)
    assert {t["id"] for t in client.tasks.list(status="failed", name=name)} == set(ids)


def test_a_running_task_is_cancelled_and_its_log_followed_to_the_end(client: lancer.Client) -> None:
    task = client.tasks.submit(name="slow", script="slow.py", params={"steps": 30})
    followed = []
    for chunk in client.tasks.logs(task["id"], follow=True, poll=0.1):
        followed.append(chunk)
        if "tick 3" in "".join(followed):
            client.tasks.cancel(task["id"])
    assert client.tasks.get(task["id"])["status"] == "cancelled"
    assert "tick 3" in "".join(followed)


def test_events_stream_the_tasks_changes_until_its_end(client: lancer.Client) -> None:
    task = client.tasks.submit(name="numbers", script="make_numbers.py", output=unique("ev"), params={"rows": 2})
    kinds = [event["event"] for event in client.tasks.events(task["id"])]
    assert kinds[-1] == "end", kinds
    assert "task" in kinds


def test_datasets_are_listed_read_by_page_and_opened_at_a_version(client: lancer.Client) -> None:
    name = unique("ds")
    for rows in (3, 5):
        done = client.tasks.wait(
            client.tasks.submit(name="numbers", script="make_numbers.py", output=name, params={"rows": rows})["id"],
            timeout=120,
            progress=False,
        )
        assert done["status"] == "completed", done
    assert name in [d["id"] for d in client.datasets.list()]
    detail = client.datasets.get(name)
    assert detail["num_rows"] == 5
    versions = client.datasets.versions(name)
    assert len(versions) == 2 and all(v.get("task_id") for v in versions), versions
    first = versions[0]["version"]
    page = client.datasets.rows(name, limit=2, columns=["n"], version=first)
    assert page["total_rows"] == 3 and [r["n"] for r in page["rows"]] == [0, 1]
    assert client.datasets.open(f"{name}@{first}").count_rows() == 3
    assert client.datasets.open(name).count_rows() == 5
    with pytest.raises(lancer.NotFound):
        client.datasets.open(f"{name}@999")
    client.datasets.delete(name)
    with pytest.raises(lancer.NotFound):
        client.datasets.get(name)


def model_with_versions(client: lancer.Client, versions: int) -> str:
    name = unique("model")
    for rows in range(1, versions + 1):
        task = client.tasks.submit(name="numbers", script="make_numbers.py", output=f"models/{name}", params={"rows": rows})
        assert client.tasks.wait(task["id"], timeout=120, progress=False)["status"] == "completed"
    return name


def test_an_alias_is_set_canaried_rolled_back_and_its_history_read(client: lancer.Client) -> None:
    model = model_with_versions(client, 2)
    aliases = client.models.aliases
    assert aliases.set(model, "production", 1)["versions"] == {"1": 100}
    canary = aliases.canary(model, "production", 2, percent=10)
    assert canary["versions"] == {"1": 90, "2": 10} and canary["version"] is None
    assert aliases.rollback(model, "production")["version"] == 1
    assert [a["alias"] for a in aliases.list(model)] == ["production"]
    changes = aliases.history(model, "production")["changes"]
    assert [c["action"] for c in changes] == ["rollback", "set", "set"]
    assert changes[1]["previous"] == {"1": 100} and changes[1]["value"] == {"1": 90, "2": 10}
    with pytest.raises(lancer.Conflict):
        client.models.delete(model)
    with pytest.raises(lancer.InvalidRequest, match="no version 7"):
        aliases.set(model, "production", 7)
    with pytest.raises(ValueError, match="either version"):
        aliases.set(model, "production")
    aliases.delete(model, "production")
    with pytest.raises(lancer.NotFound):
        aliases.get(model, "production")
    assert aliases.history(model, "production")["changes"][0]["action"] == "delete"
    client.models.delete(model)


def test_a_folder_is_uploaded_file_by_file_under_raw(client: lancer.Client, tmp_path: Path) -> None:
    folder = tmp_path / "digits"
    (folder / "deeper").mkdir(parents=True)
    (folder / "a.bin").write_bytes(b"a" * 3000)
    (folder / "deeper" / "b.bin").write_bytes(b"b" * 10)
    prefix = unique("sdk")
    uploaded = client.uploads.upload(folder, prefix=prefix, progress=False)
    assert [(u["path"], u["size"]) for u in uploaded] == [
        (f"tenants/acme/raw/{prefix}/a.bin", 3000),
        (f"tenants/acme/raw/{prefix}/deeper/b.bin", 10),
    ]
    assert client.uploads.put(f"{prefix}/c.txt", b"hello")["size"] == 5


def test_a_pipeline_from_a_dict_runs_its_steps_in_order(client: lancer.Client) -> None:
    output = unique("pl")
    spec = {
        "name": unique("two-steps"),
        "steps": [
            {"name": "make", "script": "make_numbers.py", "output": output, "params": {"rows": 4}},
            {"name": "again", "script": "make_numbers.py", "input": output, "output": unique("pl2"),
             "params": {"rows": 2}, "after": ["make"]},
        ],
    }
    pipeline = client.pipelines.submit(spec)
    done = client.pipelines.wait(pipeline["id"], timeout=180, progress=False)
    assert done["status"] == "completed", done
    assert [s["status"] for s in done["steps"]] == ["completed", "completed"]
    assert pipeline["id"] in [p["id"] for p in client.pipelines.list(page_size=1)]


def test_a_serving_task_is_called_through_the_apis_proxy(client: lancer.Client) -> None:
    task = client.tasks.submit(name="serve", script="serve.py")
    serving = client.tasks.wait(task["id"], timeout=60, until_endpoint=True, progress=False)
    assert serving["status"] == "running" and serving["endpoint"]
    answer = client.tasks.call_endpoint(task["id"], "predict", params={"x": "1"})
    assert answer.json() == {"hello": "sdk", "path": "/predict?x=1"}
    assert client.tasks.cancel(task["id"])["id"] == task["id"]
    assert client.tasks.wait(task["id"], timeout=60, progress=False)["status"] == "cancelled"


def test_health_and_metrics_answer(client: lancer.Client) -> None:
    assert client.health()
    assert "lancer_" in client.metrics()
