"""The shapes lancer's API answers with, as the OpenAPI document (``/api/v1/openapi.json``)
names them. ``tests/test_openapi.py`` fails when the document has a field one of these lacks.
"""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, TypedDict


class Resources(TypedDict, total=False):
    cpus: float
    gpus: float
    memory_mb: int
    custom: Dict[str, float]


class TaskSpec(TypedDict, total=False):
    name: str
    script: str
    input: str
    output: str
    params: Dict[str, Any]
    resources: Resources
    max_attempts: int
    idempotency_key: Optional[str]


FailureCode = Literal[
    "SCRIPT_FAILED",
    "SCRIPT_NOT_FOUND",
    "SCRIPT_START_FAILED",
    "SANDBOX_UNAVAILABLE",
    "INPUT_VERSION_NOT_FOUND",
    "RESULT_TOO_LARGE",
    "RESULT_INVALID",
    "RUNNER_ERROR",
    "LEASE_EXPIRED",
    "BACKEND_UNAVAILABLE",
    "BACKEND_REJECTED",
    "BACKEND_ERROR",
    "RAY_JOB_FAILED",
    "RAY_JOB_STOPPED",
    "STEP_NOT_STARTED",
]
"""Why a task failed: the server's closed list (``FailureCode`` in the OpenAPI document)."""


class TaskError(TypedDict):
    code: FailureCode
    message: str


class Progress(TypedDict, total=False):
    fraction: Optional[float]
    message: Optional[str]
    metrics: Dict[str, Any]


class Lineage(TypedDict, total=False):
    input_version: Optional[int]
    output_version: Optional[int]
    pipeline: Optional[str]
    step: Optional[str]


class CacheKey(TypedDict, total=False):
    script: str
    script_sha256: str
    params_sha256: str
    input: str
    input_version: Optional[str]
    output: str
    digest: str


class Task(TypedDict, total=False):
    id: str
    tenant: str
    tenant_root: str
    spec: TaskSpec
    status: str
    attempt: int
    input_path: str
    output_path: str
    created_at: str
    started_at: Optional[str]
    finished_at: Optional[str]
    heartbeat_at: Optional[str]
    result: Optional[Dict[str, Any]]
    error: Optional[TaskError]
    progress: Optional[Progress]
    backend: Optional[str]
    endpoint: Optional[str]
    sandbox: Optional[str]
    log_path: str
    lineage: Lineage
    cache_key: Optional[CacheKey]


class TaskList(TypedDict):
    tasks: List[Task]
    next_page_token: Optional[str]


class ProgressPoint(Progress, total=False):
    """A progress report and when the runner read it."""

    at: str


class ProgressHistory(TypedDict, total=False):
    points: List[ProgressPoint]
    reported: int
    dropped: int


class TaskProgress(ProgressHistory, total=False):
    """Every progress report of one attempt, oldest first."""

    task_id: str
    attempt: int
    status: str


class StepSpec(TaskSpec, total=False):
    """A step: a task spec, the steps it waits for, and whether it may come from the cache."""

    after: List[str]
    cache: bool


class PipelineSpec(TypedDict, total=False):
    name: str
    steps: List[StepSpec]
    cache: bool
    schedule: Optional[Dict[str, Any]]
    idempotency_key: Optional[str]


class Step(TypedDict, total=False):
    name: str
    status: str
    task_id: Optional[str]
    tasks: List[str]
    round: int
    error: Optional[TaskError]
    output_version: Optional[int]
    cache_key: Optional[CacheKey]
    cached_from: Optional[str]


class Pipeline(TypedDict, total=False):
    id: str
    tenant: str
    tenant_root: str
    spec: PipelineSpec
    status: str
    steps: List[Step]
    revision: int
    fired: Optional[Dict[str, Any]]
    scheduled_by: Optional[str]
    note: Optional[str]
    created_at: str
    updated_at: str
    finished_at: Optional[str]


class PipelineList(TypedDict):
    pipelines: List[Pipeline]
    next_page_token: Optional[str]


class Field(TypedDict, total=False):
    name: str
    type: str
    nullable: bool
    image: Optional[Dict[str, Any]]


class Version(TypedDict, total=False):
    version: int
    timestamp: Optional[str]
    task_id: Optional[str]
    pipeline_id: Optional[str]
    step: Optional[str]
    input_path: Optional[str]
    input_version: Optional[int]


class ModelInfo(TypedDict, total=False):
    metrics: Optional[Dict[str, Any]]
    params: Optional[Dict[str, Any]]
    created_at: Optional[str]


class ArtifactSummary(TypedDict):
    id: str
    path: str
    schema: Dict[str, str]
    num_rows: int


class ArtifactDetail(ArtifactSummary, total=False):
    fields: List[Field]
    version: int
    versions: List[Version]
    size_bytes: int
    model: Optional[ModelInfo]


class Rows(TypedDict, total=False):
    id: str
    version: int
    offset: int
    total_rows: int
    fields: List[Field]
    rows: List[Dict[str, Any]]
    next_offset: Optional[int]


class Uploaded(TypedDict, total=False):
    path: str
    size: int
    task: Optional[str]
    pipeline: Optional[str]


class AliasView(TypedDict, total=False):
    model: str
    alias: str
    version: Optional[int]
    versions: Dict[str, int]
    updated_at: str
    updated_by: str


class AliasList(TypedDict):
    aliases: List[AliasView]


class AliasRequest(TypedDict, total=False):
    version: Optional[int]
    versions: Optional[Dict[str, int]]


class AliasChangeView(TypedDict, total=False):
    at: str
    tenant: str
    action: Literal["set", "rollback", "delete"]
    previous: Optional[Dict[str, int]]
    value: Optional[Dict[str, int]]


class ReplicasRequest(TypedDict, total=False):
    min: int
    max: int


class ServingRequest(TypedDict, total=False):
    script: str
    params: Dict[str, Any]
    resources: Dict[str, Any]
    replicas: ReplicasRequest
    scale_down_after_s: Optional[int]
    max_concurrency: Optional[int]
    start_timeout_s: Optional[int]


class ReplicaBounds(TypedDict):
    min: int
    max: int


class ServingSpec(TypedDict, total=False):
    script: str
    params: Dict[str, Any]
    resources: Dict[str, Any]
    replicas: ReplicaBounds
    scale_down_after_s: int
    max_concurrency: int
    start_timeout_s: int


class ReplicaView(TypedDict, total=False):
    version: int
    task_id: str
    state: Literal["starting", "ready", "ended"]
    started_at: str


class ServingView(TypedDict, total=False):
    model: str
    declaration: ServingSpec
    updated_at: str
    updated_by: str
    replicas: List[ReplicaView]
    wanted: Dict[str, int]


class AliasHistory(TypedDict, total=False):
    model: str
    alias: str
    changes: List[AliasChangeView]
