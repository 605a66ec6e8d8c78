"""The asyncio client against the same real server: the blocking client's calls, awaited."""

from __future__ import annotations

import asyncio
import uuid

import pytest

import lancer
from conftest import KEY, Server


def test_the_async_client_submits_waits_lists_and_reads_logs(server: Server) -> None:
    async def scenario() -> None:
        async with lancer.AsyncClient(server.url, api_key=KEY) as client:
            name = f"async-{uuid.uuid4().hex[:8]}"
            tasks = await asyncio.gather(
                *(client.tasks.submit(name=name, script="make_numbers.py", output=f"{name}-{i}", params={"rows": i + 1})
                  for i in range(2))
            )
            done = await asyncio.gather(*(client.tasks.wait(t["id"], timeout=120, progress=False) for t in tasks))
            assert [d["status"] for d in done] == ["completed", "completed"], done
            listed = [t["id"] async for t in client.tasks.list(name=name, page_size=1)]
            assert sorted(listed) == sorted(t["id"] for t in tasks)
            log = "".join([chunk async for chunk in client.tasks.logs(tasks[0]["id"])])
            assert "writing 1 rows" in log
            kinds = [event["event"] async for event in client.tasks.events(tasks[1]["id"])]
            assert kinds[-1] == "end"
            dataset = await client.datasets.open(f"{name}-1")
            assert dataset.count_rows() == 2
            with pytest.raises(lancer.NotFound):
                await client.pipelines.get(str(uuid.uuid4()))

    asyncio.run(scenario())


def test_the_async_client_moves_a_models_alias(server: Server) -> None:
    async def scenario() -> None:
        async with lancer.AsyncClient(server.url, api_key=KEY) as client:
            model = f"async-model-{uuid.uuid4().hex[:8]}"
            for rows in (1, 2):
                task = await client.tasks.submit(name="numbers", script="make_numbers.py",
                                                 output=f"models/{model}", params={"rows": rows})
                assert (await client.tasks.wait(task["id"], timeout=120, progress=False))["status"] == "completed"
            aliases = client.models.aliases
            await aliases.set(model, "staging", versions={1: 3, 2: 1})
            assert (await aliases.get(model, "staging"))["versions"] == {"1": 3, "2": 1}
            assert (await aliases.set(model, "staging", 2))["version"] == 2
            assert (await aliases.rollback(model, "staging"))["versions"] == {"1": 3, "2": 1}
            assert len((await aliases.history(model, "staging"))["changes"]) == 3
            assert [a["alias"] for a in await aliases.list(model)] == ["staging"]
            await aliases.delete(model, "staging")
            with pytest.raises(lancer.NotFound):
                await aliases.get(model, "staging")

    asyncio.run(scenario())
