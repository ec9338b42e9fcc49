"""A first end-to-end run: register, start, complete."""

from __future__ import annotations


async def test_three_steps_complete(workflow_service, stub):
    svc = await workflow_service()
    status, body = await svc.post(
        "/workflows",
        {
            "id": "three",
            "steps": [
                {"id": "a", "service": "stub", "endpoint": "/effect", "input_map": {"x": "$.input.x"}},
                {"id": "b", "service": "stub", "endpoint": "/echo", "input_map": {"prev": "$.steps.a.output.n"}},
                {
                    "id": "c",
                    "service": "stub",
                    "endpoint": "/effect",
                    "input_map": {"p": "{$.steps.b.output.echo.prev}!"},
                },
            ],
        },
    )
    assert status == 201, body
    status, body = await svc.post("/executions", {"workflow_id": "three", "input": {"x": 1}})
    assert status == 202, body
    final = await svc.wait_final(body["id"])
    assert final.status == "COMPLETED", final
    assert final.output["body"] == {"p": "1!"}
