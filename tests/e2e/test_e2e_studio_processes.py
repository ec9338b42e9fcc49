"""The studio's providers end to end against ``nexus up`` as processes, with seed 004's two workflows as shipped.

A client creates a chapter blob (``metadata.type: chapter``): the bundled ``book-writer``
provider starts ``book_chapter_expansion`` for it, whose steps load the chapter from the studio,
expand it on the granulator (``core``, its offline generator), score it with
``/consistency/check`` and save the expansion as a new blob whose parent is the chapter; the
execution ends COMPLETED and the chapter's lineage shows the edge (provider, workflow,
execution). Then ``blob_processing_workflow`` runs on the chapter (validate, metadata, trigger
the book-writer, deltas) and completes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from platform_process import running_platform

pytestmark = [pytest.mark.nats, pytest.mark.slow]

CHAPTER = (
    "Anna walked down to the harbour before dawn. The lighthouse was dark, and Tomas had not come back. "
    "She waited by the boats and listened to the sea."
)


async def _until(what: str, check: Any, timeout: float = 60.0) -> Any:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        while True:
            found = await check()
            if found:
                return found
            await asyncio.sleep(0.2)
    raise AssertionError(what)


async def test_a_chapter_is_expanded_by_the_bundled_book_writer_and_the_seed_pipeline_runs(tmp_path: Any) -> None:
    async with running_platform(tmp_path) as up:
        key = await up.client_key()
        studio = f"http://127.0.0.1:{up.ports['studio']}"
        async with aiohttp.ClientSession(headers={"X-API-Key": key}) as http:

            async def get(url: str) -> tuple[int, Any]:
                async with http.get(url) as response:
                    return response.status, await response.json()

            status, providers = await get(studio + "/providers")
            assert status == 200, providers
            assert "book-writer" in {p["provider"]["id"] for p in providers["providers"]}

            metadata = {"type": "chapter", "book_id": "book:my-novel", "chapter_number": 1}
            body = {"content": CHAPTER, "content_type": "text/markdown", "metadata": metadata}
            async with http.post(studio + "/blobs", json=body) as response:
                assert response.status == 201, await response.text()
                chapter_id = (await response.json())["id"]

            async def expanded() -> Any:
                _, lineage = await get(f"{studio}/blobs/{chapter_id}/lineage")
                children = lineage.get("root", {}).get("children") or []
                return children[0] if children else None

            try:
                child = await _until("the expanded chapter", expanded, 90)
            except TimeoutError:
                raise AssertionError("no expanded chapter within 90 s:\n" + "".join(up.output[-80:])) from None
            edge = child["edge"]
            assert (edge["provider_id"], edge["workflow_id"]) == ("book-writer", "book_chapter_expansion"), edge
            execution_id = edge["execution_id"]

            async def finished() -> Any:
                _, execution = await get(f"{up.workflow_url}/executions/{execution_id}")
                return execution if execution.get("status") in ("COMPLETED", "FAILED", "COMPENSATED") else None

            execution = await _until("the expansion's end", finished)
            assert execution["status"] == "COMPLETED", execution

            status, derived = await get(f"{studio}/blobs/{child['blob_id']}")
            assert status == 200, derived
            assert derived["parent_id"] == chapter_id
            assert derived["metadata"]["type"] == "expanded_chapter"
            assert derived["metadata"]["original_id"] == chapter_id
            assert 0 <= derived["metadata"]["consistency_score"] <= 1
            assert len(derived["content"]) > len(CHAPTER)
            status, deltas = await get(f"{studio}/blobs/{child['blob_id']}/deltas")
            assert status == 200, deltas
            assert execution["output"]["new_blob_id"] == child["blob_id"]
            assert (
                execution["steps"]["check_consistency"]["output"]["score"] == derived["metadata"]["consistency_score"]
            )

            # Seed 004's pipeline on the chapter, as its owner starts it.
            pipeline_input = {
                "blob_id": chapter_id,
                "user_id": "5b1f7c2e-9a4d-4e43-8f1b-0c6d2a7e9b31",
                "provider_ids": ["book-writer"],
            }
            async with http.post(
                up.workflow_url + "/executions",
                json={"workflow_id": "blob_processing_workflow", "input": pipeline_input},
            ) as response:
                assert response.status == 202, await response.text()
                pipeline_id = (await response.json())["id"]

            async def pipeline_done() -> Any:
                _, execution = await get(f"{up.workflow_url}/executions/{pipeline_id}")
                return execution if execution.get("status") in ("COMPLETED", "FAILED", "COMPENSATED") else None

            pipeline = await _until("the pipeline's end", pipeline_done)
            assert pipeline["status"] == "COMPLETED", pipeline
            [triggered] = pipeline["steps"]["trigger_providers"]["output"]["executions"]
            assert triggered["provider_id"] == "book-writer"
            # The deltas step waited for the triggered expansion: it names the blob it created.
            _, lineage = await get(f"{studio}/blobs/{chapter_id}/lineage")
            made = {
                c["blob_id"]
                for c in lineage["root"]["children"]
                if c["edge"]["execution_id"] == triggered["execution_id"]
            }
            assert len(made) == 1, lineage
            assert set(pipeline["output"]["new_blob_ids"]) == made
