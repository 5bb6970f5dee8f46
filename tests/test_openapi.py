"""The OpenAPI document describes exactly the routes the app serves."""

from __future__ import annotations

from typing import Any

import httpx

from photofield_ai.api.openapi import openapi_document
from photofield_ai.app import ROUTES
from tests.conftest import ServerProcess


def _operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method.upper()) for path, item in doc["paths"].items() for method in item}


def test_document_and_route_table_agree() -> None:
    routed = {(r.path, m) for r in ROUTES for m in (r.methods or ())}
    # Starlette adds HEAD to every GET route; the document lists HEAD only where it means
    # readiness, and /openapi.json does not describe itself.
    served = {(p, m) for p, m in routed if not (m == "HEAD" and (p, "GET") in routed)}
    served -= {("/openapi.json", "GET")}
    assert _operations(openapi_document()) == served


def test_every_error_response_uses_the_error_schema() -> None:
    """Ours everywhere, OpenAI's on /v1/* (the shape the server sends there, errors.py)."""
    for path, item in openapi_document()["paths"].items():
        for operation in item.values():
            for status, response in operation["responses"].items():
                if int(status) >= 400 and "content" in response:
                    schema = response["content"]["application/json"]["schema"]
                    if path.startswith("/v1/"):
                        assert schema == {"$ref": "#/components/schemas/OpenAIError"}
                    else:
                        assert schema in (
                            {"$ref": "#/components/schemas/Error"},
                            {"type": "object", "properties": {"status": {"type": "string"}}},
                        )


def test_served_document_is_the_generated_one(server: ServerProcess) -> None:
    served = httpx.get(server.url + "/openapi.json").json()
    assert served == openapi_document("clip-tiny-float32", 512)
    request = served["components"]["schemas"]["EmbeddingsRequest"]["properties"]
    assert request["model"]["enum"] == ["clip-tiny-float32", None]
