"""Every request the SDK makes, once, for both clients: what to send, never how.

``ROUTES`` maps each operation of lancer's OpenAPI document to the client method that
makes it; ``tests/test_openapi.py`` fails when the document has one the map lacks, or the
map names a method a client lacks.
"""

from __future__ import annotations

import uuid
from typing import Any, Dict, Mapping, Optional, Tuple
from urllib.parse import quote

from ._http import Call

ROUTES: Dict[Tuple[str, str], str] = {
    ("post", "/api/v1/tasks"): "tasks.submit",
    ("get", "/api/v1/tasks"): "tasks.list",
    ("get", "/api/v1/tasks/{id}"): "tasks.get",
    ("post", "/api/v1/tasks/{id}/cancel"): "tasks.cancel",
    ("get", "/api/v1/tasks/{id}/logs"): "tasks.logs",
    ("get", "/api/v1/tasks/{id}/progress"): "tasks.progress",
    ("get", "/api/v1/tasks/{id}/events"): "tasks.events",
    ("get", "/api/v1/tasks/{id}/endpoint/"): "tasks.call_endpoint",
    ("post", "/api/v1/pipelines"): "pipelines.submit",
    ("get", "/api/v1/pipelines"): "pipelines.list",
    ("get", "/api/v1/pipelines/{id}"): "pipelines.get",
    ("post", "/api/v1/pipelines/{id}/cancel"): "pipelines.cancel",
    ("post", "/api/v1/pipelines/{id}/retry"): "pipelines.retry",
    ("get", "/api/v1/datasets"): "datasets.list",
    ("get", "/api/v1/datasets/{id}"): "datasets.get",
    ("delete", "/api/v1/datasets/{id}"): "datasets.delete",
    ("get", "/api/v1/datasets/{id}/rows"): "datasets.rows",
    ("get", "/api/v1/models"): "models.list",
    ("get", "/api/v1/models/{id}"): "models.get",
    ("delete", "/api/v1/models/{id}"): "models.delete",
    ("get", "/api/v1/models/{id}/rows"): "models.rows",
    ("get", "/api/v1/models/{id}/aliases"): "models.aliases.list",
    ("get", "/api/v1/models/{id}/aliases/{alias}"): "models.aliases.get",
    ("put", "/api/v1/models/{id}/aliases/{alias}"): "models.aliases.set",
    ("delete", "/api/v1/models/{id}/aliases/{alias}"): "models.aliases.delete",
    ("post", "/api/v1/models/{id}/aliases/{alias}/rollback"): "models.aliases.rollback",
    ("get", "/api/v1/models/{id}/aliases/{alias}/history"): "models.aliases.history",
    ("put", "/api/v1/models/{id}/serving"): "models.serving.declare",
    ("get", "/api/v1/models/{id}/serving"): "models.serving.get",
    ("delete", "/api/v1/models/{id}/serving"): "models.serving.stop",
    ("get", "/api/v1/models/{model}@{alias}/endpoint/"): "models.call_endpoint",
    ("put", "/api/v1/uploads/{key}"): "uploads.put",
    ("get", "/healthz"): "health",
    ("get", "/metrics"): "metrics",
}

# Routes for the console in a browser, which a program has no use for: the endpoint key
# cookie lets a served page's own requests through the proxy.
BROWSER_ONLY = frozenset({("put", "/api/v1/endpoint-key"), ("delete", "/api/v1/endpoint-key")})


def _id(value: str) -> str:
    return quote(value, safe="")


def _submit(path: str, spec: Mapping[str, Any], idempotency_key: Optional[str]) -> Call:
    # Every submit carries a key, so sending it again after a dropped answer is harmless:
    # the server answers the first submit's record.
    key = idempotency_key or str(uuid.uuid4())
    return Call("POST", path, json=dict(spec), headers={"idempotency-key": key})


def submit_task(spec: Mapping[str, Any], idempotency_key: Optional[str] = None) -> Call:
    return _submit("/tasks", spec, idempotency_key)


def list_tasks(
    status: Optional[str], name: Optional[str], limit: Optional[int], page_token: Optional[str]
) -> Call:
    params = {"status": status, "name": name, "limit": limit, "page_token": page_token}
    return Call("GET", "/tasks", params=params)


def get_task(task_id: str) -> Call:
    return Call("GET", f"/tasks/{_id(task_id)}")


def cancel_task(task_id: str) -> Call:
    return Call("POST", f"/tasks/{_id(task_id)}/cancel")


def task_logs(task_id: str, attempt: Optional[int], offset: int, limit: Optional[int]) -> Call:
    params = {"attempt": attempt, "offset": offset, "limit": limit}
    return Call("GET", f"/tasks/{_id(task_id)}/logs", params=params)


def task_progress(task_id: str, attempt: Optional[int]) -> Call:
    return Call("GET", f"/tasks/{_id(task_id)}/progress", params={"attempt": attempt})


def task_events(task_id: str) -> Call:
    return Call("GET", f"/tasks/{_id(task_id)}/events", headers={"accept": "text/event-stream"})


def call_endpoint(
    task_id: str, path: str, method: str, json: Any, params: Optional[Mapping[str, Any]]
) -> Call:
    route = f"/tasks/{_id(task_id)}/endpoint/{quote(path.lstrip('/'), safe='/')}"
    harmless = method.upper() in {"GET", "HEAD", "OPTIONS", "PUT", "DELETE"}
    return Call(method.upper(), route, json=json, params=params, idempotent=harmless)


def call_alias_endpoint(
    model: str, alias: str, path: str, method: str, json: Any, params: Optional[Mapping[str, Any]]
) -> Call:
    route = f"/models/{_id(model)}@{_id(alias)}/endpoint/{quote(path.lstrip('/'), safe='/')}"
    harmless = method.upper() in {"GET", "HEAD", "OPTIONS", "PUT", "DELETE"}
    return Call(method.upper(), route, json=json, params=params, idempotent=harmless)


def declare_serving(model: str, declaration: Mapping[str, Any]) -> Call:
    # A declaration sent again is the same declaration: harmless.
    return Call("PUT", f"/models/{_id(model)}/serving", json=dict(declaration))


def get_serving(model: str) -> Call:
    return Call("GET", f"/models/{_id(model)}/serving")


def stop_serving(model: str) -> Call:
    return Call("DELETE", f"/models/{_id(model)}/serving")


def submit_pipeline(spec: Mapping[str, Any], idempotency_key: Optional[str] = None) -> Call:
    return _submit("/pipelines", spec, idempotency_key)


def list_pipelines(limit: Optional[int], page_token: Optional[str]) -> Call:
    return Call("GET", "/pipelines", params={"limit": limit, "page_token": page_token})


def get_pipeline(pipeline_id: str) -> Call:
    return Call("GET", f"/pipelines/{_id(pipeline_id)}")


def cancel_pipeline(pipeline_id: str) -> Call:
    return Call("POST", f"/pipelines/{_id(pipeline_id)}/cancel")


def retry_pipeline(pipeline_id: str) -> Call:
    # A retry that reached the server and lost its answer must not start a second round.
    return Call("POST", f"/pipelines/{_id(pipeline_id)}/retry", idempotent=False)


def list_artifacts(kind: str) -> Call:
    return Call("GET", f"/{kind}")


def get_artifact(kind: str, artifact_id: str) -> Call:
    return Call("GET", f"/{kind}/{_id(artifact_id)}")


def delete_artifact(kind: str, artifact_id: str) -> Call:
    return Call("DELETE", f"/{kind}/{_id(artifact_id)}")


def artifact_rows(
    kind: str,
    artifact_id: str,
    offset: int,
    limit: Optional[int],
    columns: Optional[Any],
    version: Optional[int],
) -> Call:
    if columns is not None and not isinstance(columns, str):
        columns = ",".join(columns)
    params = {"offset": offset, "limit": limit, "columns": columns, "version": version}
    return Call("GET", f"/{kind}/{_id(artifact_id)}/rows", params=params)


def _alias(model: str, alias: str) -> str:
    return f"/models/{_id(model)}/aliases/{_id(alias)}"


def list_aliases(model: str) -> Call:
    return Call("GET", f"/models/{_id(model)}/aliases")


def get_alias(model: str, alias: str) -> Call:
    return Call("GET", _alias(model, alias))


def set_alias(
    model: str, alias: str, version: Optional[int], versions: Optional[Mapping[int, int]]
) -> Call:
    if (version is None) == (versions is None):
        raise ValueError("give either version (one version) or versions ({version: weight})")
    body: Dict[str, Any] = (
        {"version": version}
        if version is not None
        else {"versions": {str(v): w for v, w in (versions or {}).items()}}
    )
    # Setting the value an alias has already records nothing: a repeat is harmless.
    return Call("PUT", _alias(model, alias), json=body)


def delete_alias(model: str, alias: str) -> Call:
    return Call("DELETE", _alias(model, alias))


def rollback_alias(model: str, alias: str) -> Call:
    # A second rollback undoes the first: one whose answer was lost must not be sent again.
    return Call("POST", f"{_alias(model, alias)}/rollback", idempotent=False)


def alias_history(model: str, alias: str) -> Call:
    return Call("GET", f"{_alias(model, alias)}/history")


def canary_weights(current: Mapping[str, Any], version: int, percent: int) -> Dict[int, int]:
    """The split that sends ``percent`` of an alias's traffic to ``version`` and the rest to
    the one version it names now."""
    if not 1 <= percent <= 99:
        raise ValueError("percent is 1 to 99")
    stable = current.get("version")
    if stable is None:
        raise ValueError("a canary starts from an alias that names one version; set it first")
    if stable == version:
        raise ValueError(f"the alias already names version {version}")
    return {int(stable): 100 - percent, version: percent}


def upload(key: str, body: Any) -> Call:
    return Call(
        "PUT",
        f"/uploads/{quote(key.lstrip('/'), safe='/')}",
        headers={"content-type": "application/octet-stream"},
        body=body,
    )


def health() -> Call:
    return Call("GET", "/healthz", root=True)


def metrics() -> Call:
    return Call("GET", "/metrics", root=True)


def parse_ref(ref: str) -> Tuple[str, Optional[int]]:
    """``"mnist_clean@3"`` as ``("mnist_clean", 3)``; ``"mnist_clean"`` as ``(.., None)``."""
    name, at, version = ref.partition("@")
    if not at:
        return name, None
    if not version.isdigit():
        raise ValueError(f"'{ref}': the version after @ must be a whole number")
    return name, int(version)
