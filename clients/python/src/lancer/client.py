"""The blocking client: ``lancer.Client()``, one method per route of lancer's API."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union, cast

import httpx

from . import _calls as calls
from ._http import Call, Retry, SyncTransport, raise_for, settings
from ._shared import (
    Bar,
    SpecSource,
    as_pipeline,
    as_task,
    chunks,
    files_under,
    log_ended,
    pipeline_bar_state,
    pipeline_done,
    pipeline_spec,
    SseParser,
    show_progress,
    task_bar_state,
    task_done,
    task_spec,
)
from .types import (
    AliasHistory,
    AliasView,
    ServingRequest,
    ServingView,
    ArtifactDetail,
    ArtifactSummary,
    Pipeline,
    Rows,
    Task,
    TaskProgress,
    Uploaded,
    Version,
)


class Client:
    """A lancer server's API. ``url`` and ``api_key`` default to ``LANCER_URL`` (else
    ``http://127.0.0.1:8000``) and ``LANCER_API_KEY``, as the CLI's do.

    >>> client = lancer.Client()
    >>> task = client.tasks.submit(name="numbers", script="examples/first_task.py",
    ...                            output="numbers", params={"rows": 10})
    >>> client.tasks.wait(task["id"])["result"]
    {'total_records': 10}
    """

    def __init__(
        self,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        *,
        timeout: float = 30.0,
        retry: Retry = Retry(),
    ) -> None:
        base, headers = settings(url, api_key)
        self.url = base
        self._http = httpx.Client(base_url=base, headers=headers, timeout=timeout)
        self._transport = SyncTransport(self._http, retry)
        self.tasks = Tasks(self)
        self.pipelines = Pipelines(self)
        self.datasets = Artifacts(self, "datasets")
        self.models = Models(self)
        self.uploads = Uploads(self)

    def _json(self, call: Call) -> Any:
        return self._transport.send(call).json()

    def health(self) -> bool:
        """Whether the server answers."""
        return self._transport.send(calls.health()).is_success

    def metrics(self) -> str:
        """The Prometheus text of ``/metrics``: the caller's tenant only on a keyed server."""
        return self._transport.send(calls.metrics()).text

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class Tasks:
    def __init__(self, client: Client) -> None:
        self._c = client

    def submit(
        self,
        spec: Optional[Mapping[str, Any]] = None,
        *,
        name: Optional[str] = None,
        script: Optional[str] = None,
        input: Optional[str] = None,
        output: Optional[str] = None,
        params: Optional[Mapping[str, Any]] = None,
        resources: Optional[Mapping[str, Any]] = None,
        max_attempts: Optional[int] = None,
        idempotency_key: Optional[str] = None,
    ) -> Task:
        """Submits a task (from ``spec``, the keyword fields, or both). Safe to retry: the
        submit carries ``idempotency_key``, one of its own when none is given."""
        fields = {"name": name, "script": script, "input": input, "output": output,
                  "params": params, "resources": resources, "max_attempts": max_attempts}
        body = task_spec(spec, fields)
        return as_task(self._c._json(calls.submit_task(body, idempotency_key)))

    def get(self, task_id: str) -> Task:
        return as_task(self._c._json(calls.get_task(task_id)))

    def list(
        self, *, status: Optional[str] = None, name: Optional[str] = None, page_size: int = 100
    ) -> Iterator[Task]:
        """The caller's tasks, newest first, fetched a page at a time as the loop goes."""
        token: Optional[str] = None
        while True:
            page = self._c._json(calls.list_tasks(status, name, page_size, token))
            yield from page["tasks"]
            token = page.get("next_page_token")
            if not token:
                return

    def cancel(self, task_id: str) -> Task:
        return as_task(self._c._json(calls.cancel_task(task_id)))

    def wait(
        self,
        task_id: str,
        *,
        timeout: Optional[float] = None,
        progress: Optional[bool] = None,
        until_endpoint: bool = False,
        poll: float = 0.5,
    ) -> Task:
        """Polls until the task ends (or, with ``until_endpoint``, serves), drawing its
        progress in a terminal or notebook; the task as it ended. ``TimeoutError`` after
        ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = Bar(show_progress(progress), task_id[:13])
        try:
            while True:
                task = self.get(task_id)
                bar.update(*task_bar_state(task))
                if task_done(task, until_endpoint):
                    return task
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"task {task_id} is still {task.get('status')}")
                time.sleep(poll)
        finally:
            bar.close()

    def logs(
        self, task_id: str, *, attempt: Optional[int] = None, follow: bool = False, poll: float = 0.5
    ) -> Iterator[str]:
        """The task's log in chunks of text; with ``follow``, more as it is written, until
        the task has ended and all of it was read."""
        offset = 0
        while True:
            response = self._c._transport.send(calls.task_logs(task_id, attempt, offset, None))
            if response.content:
                yield response.text
                offset = int(response.headers.get("x-next-offset", offset + len(response.content)))
                continue
            if not follow or log_ended(response):
                return
            time.sleep(poll)

    def progress(self, task_id: str, *, attempt: Optional[int] = None) -> TaskProgress:
        """Every progress report of an attempt, oldest first: the points of a loss curve."""
        return cast(TaskProgress, self._c._json(calls.task_progress(task_id, attempt)))

    def events(self, task_id: str) -> Iterator[Dict[str, str]]:
        """The task's server-sent events as they happen (``task`` on each change, ``log``
        for new log text, ``end`` once it ended): ``{"event", "id", "data"}`` each."""
        call = calls.task_events(task_id)
        with self._c._http.stream("GET", call.url(), headers=dict(call.headers), timeout=None) as response:
            if not response.is_success:
                response.read()
                raise_for(response)
            parser = SseParser()
            for line in response.iter_lines():
                event = parser.feed(line)
                if event is not None:
                    yield event

    def call_endpoint(
        self,
        task_id: str,
        path: str = "",
        *,
        method: str = "GET",
        json: Any = None,
        params: Optional[Mapping[str, Any]] = None,
    ) -> httpx.Response:
        """A request to a serving task's endpoint through the API's proxy (``/predict``)."""
        return self._c._transport.send(calls.call_endpoint(task_id, path, method, json, params))


class Pipelines:
    def __init__(self, client: Client) -> None:
        self._c = client

    def submit(self, spec: SpecSource, *, idempotency_key: Optional[str] = None) -> Pipeline:
        """Submits a pipeline from a mapping or a JSON file (``mnist/pipeline.json``)."""
        body = pipeline_spec(spec)
        return as_pipeline(self._c._json(calls.submit_pipeline(body, idempotency_key)))

    def get(self, pipeline_id: str) -> Pipeline:
        return as_pipeline(self._c._json(calls.get_pipeline(pipeline_id)))

    def list(self, *, page_size: int = 100) -> Iterator[Pipeline]:
        token: Optional[str] = None
        while True:
            page = self._c._json(calls.list_pipelines(page_size, token))
            yield from page["pipelines"]
            token = page.get("next_page_token")
            if not token:
                return

    def cancel(self, pipeline_id: str) -> Pipeline:
        return as_pipeline(self._c._json(calls.cancel_pipeline(pipeline_id)))

    def retry(self, pipeline_id: str) -> Pipeline:
        return as_pipeline(self._c._json(calls.retry_pipeline(pipeline_id)))

    def wait(
        self,
        pipeline_id: str,
        *,
        timeout: Optional[float] = None,
        progress: Optional[bool] = None,
        poll: float = 0.5,
    ) -> Pipeline:
        """Polls until the pipeline ends (a serving step counts as done), drawing its steps."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = Bar(show_progress(progress), pipeline_id[:13])
        try:
            while True:
                pipeline = self.get(pipeline_id)
                bar.update(*pipeline_bar_state(pipeline))
                if pipeline_done(pipeline):
                    return pipeline
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"pipeline {pipeline_id} is still {pipeline.get('status')}")
                time.sleep(poll)
        finally:
            bar.close()


class Artifacts:
    """The caller's Lance datasets (``client.datasets``) or models (``client.models``)."""

    def __init__(self, client: Client, kind: str) -> None:
        self._c = client
        self._kind = kind

    def list(self) -> List[ArtifactSummary]:
        return cast(List[ArtifactSummary], self._c._json(calls.list_artifacts(self._kind)))

    def get(self, artifact_id: str) -> ArtifactDetail:
        """Schema, size, and every version with the task and data that made it."""
        return cast(ArtifactDetail, self._c._json(calls.get_artifact(self._kind, artifact_id)))

    def versions(self, artifact_id: str) -> List[Version]:
        """Every version, each with its lineage: the task, pipeline step and input behind it."""
        return self.get(artifact_id).get("versions", [])

    def delete(self, artifact_id: str) -> None:
        self._c._transport.send(calls.delete_artifact(self._kind, artifact_id))

    def rows(
        self,
        artifact_id: str,
        *,
        offset: int = 0,
        limit: Optional[int] = None,
        columns: Optional[Sequence[str]] = None,
        version: Optional[int] = None,
    ) -> Rows:
        """A page of rows as JSON (binary cells as their sizes)."""
        call = calls.artifact_rows(self._kind, artifact_id, offset, limit, columns, version)
        return cast(Rows, self._c._json(call))

    def open(self, ref: str, *, storage_options: Optional[Mapping[str, str]] = None) -> Any:
        """``"mnist_clean@3"`` (or the latest without ``@``) as a ``lance.LanceDataset`` at
        that exact version: the bytes a task read. Reads the lake directly, so it works
        where this process can reach the lake (its folder, or its bucket with credentials
        in ``storage_options`` or the ``AWS_*`` environment), not through a keyed API alone."""
        name, version = calls.parse_ref(ref)
        return open_lance(self.get(name), version, storage_options)


class Models(Artifacts):
    """The caller's models (``client.models``), and their aliases (``client.models.aliases``)."""

    def __init__(self, client: Client) -> None:
        super().__init__(client, "models")
        self.aliases = Aliases(client)
        self.serving = Serving(client)

    def call_endpoint(
        self,
        model: str,
        alias: str,
        path: str = "",
        *,
        method: str = "GET",
        json: Any = None,
        params: Optional[Mapping[str, Any]] = None,
    ) -> httpx.Response:
        """A request to an alias's endpoint (``/predict``): a ready replica of the version
        the alias's weights pick answers, and its ``X-Lancer-Version`` header names it."""
        call = calls.call_alias_endpoint(model, alias, path, method, json, params)
        return self._c._transport.send(call)


class Serving:
    """How a model's aliased versions are served: the script each replica runs, and how
    many replicas each version keeps (``min: 0`` scales to zero when idle)."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def declare(self, model: str, declaration: ServingRequest) -> ServingView:
        """``{"script": ..., "replicas": {"min": 0, "max": 4}, "scale_down_after_s": 300}``."""
        return cast(ServingView, self._c._json(calls.declare_serving(model, declaration)))

    def get(self, model: str) -> ServingView:
        """The declaration, and each replica with its version, task and state."""
        return cast(ServingView, self._c._json(calls.get_serving(model)))

    def stop(self, model: str) -> None:
        """Stops the model's replicas; its aliases stay."""
        self._c._transport.send(calls.stop_serving(model))


class Aliases:
    """Names for model versions, or for splits between them by weight, with their history."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def list(self, model: str) -> List[AliasView]:
        return cast(List[AliasView], self._c._json(calls.list_aliases(model))["aliases"])

    def get(self, model: str, alias: str) -> AliasView:
        return cast(AliasView, self._c._json(calls.get_alias(model, alias)))

    def set(
        self,
        model: str,
        alias: str,
        version: Optional[int] = None,
        *,
        versions: Optional[Mapping[int, int]] = None,
    ) -> AliasView:
        """Points ``alias`` at one ``version``, or splits it by weight: ``versions={7: 90, 8: 10}``."""
        return cast(AliasView, self._c._json(calls.set_alias(model, alias, version, versions)))

    def canary(self, model: str, alias: str, version: int, *, percent: int = 10) -> AliasView:
        """Sends ``percent`` of the alias's traffic to ``version``; the version it names now
        keeps the rest."""
        weights = calls.canary_weights(self.get(model, alias), version, percent)
        return self.set(model, alias, versions=weights)

    def rollback(self, model: str, alias: str) -> AliasView:
        """Undoes the alias's last change (a second rollback undoes the first)."""
        return cast(AliasView, self._c._json(calls.rollback_alias(model, alias)))

    def history(self, model: str, alias: str) -> AliasHistory:
        """Every change, newest first: when, by which tenant, the value before and after."""
        return cast(AliasHistory, self._c._json(calls.alias_history(model, alias)))

    def delete(self, model: str, alias: str) -> None:
        self._c._transport.send(calls.delete_alias(model, alias))


def open_lance(detail: ArtifactDetail, version: Optional[int], options: Optional[Mapping[str, str]]) -> Any:
    """The pylance dataset of ``detail`` at ``version``, once the API has it."""
    known = {v.get("version") for v in detail.get("versions", [])} | {detail.get("version")}
    if version is not None and version not in known:
        from .errors import NotFound

        raise NotFound("VERSION_NOT_FOUND", f"{detail['id']} has no version {version}", 404)
    try:
        import lance
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError("open() needs pylance: pip install 'lancer-client[lance]'") from err
    return lance.dataset(detail["path"], version=version, storage_options=dict(options or {}) or None)


class Uploads:
    def __init__(self, client: Client) -> None:
        self._c = client

    def put(self, key: str, data: bytes) -> Uploaded:
        """Stores ``data`` at ``raw/<key>``; an ingestion rule matching it starts its task."""
        return cast(Uploaded, self._c._json(calls.upload(key, lambda: data)))

    def upload(
        self, path: Union[str, "Path"], *, prefix: str = "", progress: Optional[bool] = None
    ) -> List[Uploaded]:
        """Streams a file, or every file under a folder, to ``raw/<prefix>/...``, with a
        bar of the bytes sent."""
        found = files_under(Path(path), prefix)
        total = sum(file.stat().st_size for file, _ in found)
        bar = Bar(show_progress(progress), "upload")
        done: List[Uploaded] = []
        try:
            sent = 0
            for file, key in found:
                # A fresh body for each try: a retried upload sends the file again from its start.
                def body(file: Path = file, start: int = sent) -> Iterator[bytes]:
                    return chunks(file, bar, [start], total)

                done.append(cast(Uploaded, self._c._json(calls.upload(key, body))))
                sent += file.stat().st_size
        finally:
            bar.close()
        return done
