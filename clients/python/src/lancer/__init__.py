"""lancer's Python client, and the helper its task scripts use.

    import lancer
    client = lancer.Client()                      # LANCER_URL, LANCER_API_KEY
    pipeline = client.pipelines.submit("mnist/pipeline.json")
    client.pipelines.wait(pipeline["id"])         # a bar per step, in a terminal or notebook
    client.models.get("mnist_cnn")["model"]["metrics"]
    client.datasets.open("mnist_clean@1").to_table()

Inside a task's script, ``lancer.task`` reports progress and endpoints.
"""

from ._http import Retry
from .aio import AsyncClient
from .client import Client
from .errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    LancerError,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    ServerError,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from ._task import NotInATask, task

__all__ = [
    "AsyncClient",
    "Client",
    "Conflict",
    "Forbidden",
    "InvalidRequest",
    "LancerError",
    "NotFound",
    "NotInATask",
    "PayloadTooLarge",
    "RequestTimeout",
    "Retry",
    "ServerError",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "task",
]
__version__ = "0.1.0"
