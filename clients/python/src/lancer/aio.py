"""The asyncio client: ``lancer.AsyncClient()``, the blocking client's methods as coroutines
(and async iterators), for notebooks and services that run an event loop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, AsyncIterator, Dict, List, Mapping, Optional, Sequence, Union, cast

import httpx

from . import _calls as calls
from ._http import AsyncTransport, Call, Retry, raise_for, settings
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
from .client import open_lance
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


class AsyncClient:
    """``lancer.Client``'s API as coroutines: ``await client.tasks.get(id)``."""

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
        self._http = httpx.AsyncClient(base_url=base, headers=headers, timeout=timeout)
        self._transport = AsyncTransport(self._http, retry)
        self.tasks = AsyncTasks(self)
        self.pipelines = AsyncPipelines(self)
        self.datasets = AsyncArtifacts(self, "datasets")
        self.models = AsyncModels(self)
        self.uploads = AsyncUploads(self)

    async def _json(self, call: Call) -> Any:
        return (await self._transport.send(call)).json()

    async def health(self) -> bool:
        return (await self._transport.send(calls.health())).is_success

    async def metrics(self) -> str:
        return (await self._transport.send(calls.metrics())).text

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()


class AsyncTasks:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def submit(
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
        fields = {"name": name, "script": script, "input": input, "output": output,
                  "params": params, "resources": resources, "max_attempts": max_attempts}
        body = task_spec(spec, fields)
        return as_task(await self._c._json(calls.submit_task(body, idempotency_key)))

    async def get(self, task_id: str) -> Task:
        return as_task(await self._c._json(calls.get_task(task_id)))

    async def list(
        self, *, status: Optional[str] = None, name: Optional[str] = None, page_size: int = 100
    ) -> AsyncIterator[Task]:
        token: Optional[str] = None
        while True:
            page = await self._c._json(calls.list_tasks(status, name, page_size, token))
            for task in page["tasks"]:
                yield task
            token = page.get("next_page_token")
            if not token:
                return

    async def cancel(self, task_id: str) -> Task:
        return as_task(await self._c._json(calls.cancel_task(task_id)))

    async def wait(
        self,
        task_id: str,
        *,
        timeout: Optional[float] = None,
        progress: Optional[bool] = None,
        until_endpoint: bool = False,
        poll: float = 0.5,
    ) -> Task:
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = Bar(show_progress(progress), task_id[:13])
        try:
            while True:
                task = await self.get(task_id)
                bar.update(*task_bar_state(task))
                if task_done(task, until_endpoint):
                    return task
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"task {task_id} is still {task.get('status')}")
                await asyncio.sleep(poll)
        finally:
            bar.close()

    async def logs(
        self, task_id: str, *, attempt: Optional[int] = None, follow: bool = False, poll: float = 0.5
    ) -> AsyncIterator[str]:
        offset = 0
        while True:
            response = await self._c._transport.send(calls.task_logs(task_id, attempt, offset, None))
            if response.content:
                yield response.text
                offset = int(response.headers.get("x-next-offset", offset + len(response.content)))
                continue
            if not follow or log_ended(response):
                return
            await asyncio.sleep(poll)

    async def progress(self, task_id: str, *, attempt: Optional[int] = None) -> TaskProgress:
        return cast(TaskProgress, await self._c._json(calls.task_progress(task_id, attempt)))

    async def events(self, task_id: str) -> AsyncIterator[Dict[str, str]]:
        call = calls.task_events(task_id)
        async with self._c._http.stream("GET", call.url(), headers=dict(call.headers), timeout=None) as response:
            if not response.is_success:
                await response.aread()
                raise_for(response)
            parser = SseParser()
            async for line in response.aiter_lines():
                event = parser.feed(line)
                if event is not None:
                    yield event

    async def call_endpoint(
        self,
        task_id: str,
        path: str = "",
        *,
        method: str = "GET",
        json: Any = None,
        params: Optional[Mapping[str, Any]] = None,
    ) -> httpx.Response:
        return await self._c._transport.send(calls.call_endpoint(task_id, path, method, json, params))


async def _async_chunks(file: Path, bar: Bar, start: int, total: int) -> AsyncIterator[bytes]:
    # An AsyncClient streams only an async body.
    for chunk in chunks(file, bar, [start], total):
        yield chunk


class AsyncPipelines:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def submit(self, spec: SpecSource, *, idempotency_key: Optional[str] = None) -> Pipeline:
        body = pipeline_spec(spec)
        return as_pipeline(await self._c._json(calls.submit_pipeline(body, idempotency_key)))

    async def get(self, pipeline_id: str) -> Pipeline:
        return as_pipeline(await self._c._json(calls.get_pipeline(pipeline_id)))

    async def list(self, *, page_size: int = 100) -> AsyncIterator[Pipeline]:
        token: Optional[str] = None
        while True:
            page = await self._c._json(calls.list_pipelines(page_size, token))
            for pipeline in page["pipelines"]:
                yield pipeline
            token = page.get("next_page_token")
            if not token:
                return

    async def cancel(self, pipeline_id: str) -> Pipeline:
        return as_pipeline(await self._c._json(calls.cancel_pipeline(pipeline_id)))

    async def retry(self, pipeline_id: str) -> Pipeline:
        return as_pipeline(await self._c._json(calls.retry_pipeline(pipeline_id)))

    async def wait(
        self,
        pipeline_id: str,
        *,
        timeout: Optional[float] = None,
        progress: Optional[bool] = None,
        poll: float = 0.5,
    ) -> Pipeline:
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = Bar(show_progress(progress), pipeline_id[:13])
        try:
            while True:
                pipeline = await self.get(pipeline_id)
                bar.update(*pipeline_bar_state(pipeline))
                if pipeline_done(pipeline):
                    return pipeline
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"pipeline {pipeline_id} is still {pipeline.get('status')}")
                await asyncio.sleep(poll)
        finally:
            bar.close()


class AsyncArtifacts:
    def __init__(self, client: AsyncClient, kind: str) -> None:
        self._c = client
        self._kind = kind

    async def list(self) -> List[ArtifactSummary]:
        return cast(List[ArtifactSummary], await self._c._json(calls.list_artifacts(self._kind)))

    async def get(self, artifact_id: str) -> ArtifactDetail:
        return cast(ArtifactDetail, await self._c._json(calls.get_artifact(self._kind, artifact_id)))

    async def versions(self, artifact_id: str) -> List[Version]:
        return (await self.get(artifact_id)).get("versions", [])

    async def delete(self, artifact_id: str) -> None:
        await self._c._transport.send(calls.delete_artifact(self._kind, artifact_id))

    async def rows(
        self,
        artifact_id: str,
        *,
        offset: int = 0,
        limit: Optional[int] = None,
        columns: Optional[Sequence[str]] = None,
        version: Optional[int] = None,
    ) -> Rows:
        call = calls.artifact_rows(self._kind, artifact_id, offset, limit, columns, version)
        return cast(Rows, await self._c._json(call))

    async def open(self, ref: str, *, storage_options: Optional[Mapping[str, str]] = None) -> Any:
        name, version = calls.parse_ref(ref)
        return open_lance(await self.get(name), version, storage_options)


class AsyncModels(AsyncArtifacts):
    """``client.models``, and their aliases (``client.models.aliases``)."""

    def __init__(self, client: AsyncClient) -> None:
        super().__init__(client, "models")
        self.aliases = AsyncAliases(client)
        self.serving = AsyncServing(client)

    async def call_endpoint(
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
        return await self._c._transport.send(call)


class AsyncServing:
    """How a model's aliased versions are served: the script each replica runs, and how
    many replicas each version keeps (``min: 0`` scales to zero when idle)."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def declare(self, model: str, declaration: ServingRequest) -> ServingView:
        """``{"script": ..., "replicas": {"min": 0, "max": 4}, "scale_down_after_s": 300}``."""
        return cast(ServingView, await self._c._json(calls.declare_serving(model, declaration)))

    async def get(self, model: str) -> ServingView:
        """The declaration, and each replica with its version, task and state."""
        return cast(ServingView, await self._c._json(calls.get_serving(model)))

    async def stop(self, model: str) -> None:
        """Stops the model's replicas; its aliases stay."""
        await self._c._transport.send(calls.stop_serving(model))


class AsyncAliases:
    """``lancer.client.Aliases``, awaited."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def list(self, model: str) -> List[AliasView]:
        return cast(List[AliasView], (await self._c._json(calls.list_aliases(model)))["aliases"])

    async def get(self, model: str, alias: str) -> AliasView:
        return cast(AliasView, await self._c._json(calls.get_alias(model, alias)))

    async def set(
        self,
        model: str,
        alias: str,
        version: Optional[int] = None,
        *,
        versions: Optional[Mapping[int, int]] = None,
    ) -> AliasView:
        call = calls.set_alias(model, alias, version, versions)
        return cast(AliasView, await self._c._json(call))

    async def canary(self, model: str, alias: str, version: int, *, percent: int = 10) -> AliasView:
        weights = calls.canary_weights(await self.get(model, alias), version, percent)
        return await self.set(model, alias, versions=weights)

    async def rollback(self, model: str, alias: str) -> AliasView:
        return cast(AliasView, await self._c._json(calls.rollback_alias(model, alias)))

    async def history(self, model: str, alias: str) -> AliasHistory:
        return cast(AliasHistory, await self._c._json(calls.alias_history(model, alias)))

    async def delete(self, model: str, alias: str) -> None:
        await self._c._transport.send(calls.delete_alias(model, alias))


class AsyncUploads:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def put(self, key: str, data: bytes) -> Uploaded:
        return cast(Uploaded, await self._c._json(calls.upload(key, lambda: data)))

    async def upload(
        self, path: Union[str, "Path"], *, prefix: str = "", progress: Optional[bool] = None
    ) -> List[Uploaded]:
        found = files_under(Path(path), prefix)
        total = sum(file.stat().st_size for file, _ in found)
        bar = Bar(show_progress(progress), "upload")
        done: List[Uploaded] = []
        try:
            sent = 0
            for file, key in found:
                def body(file: Path = file, start: int = sent) -> AsyncIterator[bytes]:
                    return _async_chunks(file, bar, start, total)

                done.append(cast(Uploaded, await self._c._json(calls.upload(key, body))))
                sent += file.stat().st_size
        finally:
            bar.close()
        return done
