"""The OpenAPI 3 document served at /openapi.json, written by hand to match the handlers."""

from __future__ import annotations

from typing import Any

from photofield_ai import __version__

_ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(s): {"description": "error", "content": {"application/json": {"schema": _ERROR}}}
        for s in statuses
    }


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _multipart_images() -> dict[str, Any]:
    binary = {"type": "string", "format": "binary"}
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": binary},
                    # Any field name works, but every part must be a file.
                    "additionalProperties": binary,
                    "required": ["image"],
                }
            }
        },
    }


def _readiness(what: str) -> dict[str, Any]:
    return {
        "summary": f"200 when the {what} model(s) are ready",
        "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}},
    }


def _list_of(key: str, required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    """A response body `{key: [item, ...]}`: the shape of every embedding answer."""
    return {
        "type": "object",
        "required": [key],
        "properties": {
            key: {
                "type": "array",
                "items": {"type": "object", "required": required, "properties": properties},
            }
        },
    }


def openapi_document() -> dict[str, Any]:
    embedding_props = {
        "embedding_f16_b64": {
            "type": "string",
            "format": "byte",
            "description": "base64 of the float16 little-endian embedding",
        },
        "embedding_inv_norm_f16_uint16": {
            "type": "integer",
            "minimum": 0,
            "maximum": 65535,
            "description": "the 16 bits of float16(1 / L2 norm), as an integer",
        },
    }
    # Each result names the multipart part it answers.
    part_props = {
        "field": {"type": "string"},
        "filename": {"type": "string", "nullable": True},
    }
    status = {"type": "object", "properties": {"status": {"type": "string"}}}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "photofield-ai",
            "version": __version__,
            "description": "CLIP image and text embeddings for Photofield, batched "
            "across requests.",
        },
        "paths": {
            "/image-embeddings": {
                "post": {
                    "summary": "Embed one or more images (every file part is an image)",
                    "requestBody": _multipart_images(),
                    "responses": {
                        "200": {
                            "description": "embeddings in request order",
                            **_json({"$ref": "#/components/schemas/ImageEmbeddings"}),
                        },
                        **_errors(400, 413, 415, 422, 500, 503),
                    },
                },
                "head": _readiness("visual"),
            },
            "/text-embeddings": {
                "post": {
                    "summary": "Embed texts",
                    "requestBody": {
                        "required": True,
                        **_json({"$ref": "#/components/schemas/TextsRequest"}),
                    },
                    "responses": {
                        "200": {
                            "description": "embeddings in request order",
                            **_json({"$ref": "#/components/schemas/TextEmbeddings"}),
                        },
                        **_errors(400, 413, 500, 503),
                    },
                },
                "head": _readiness("textual"),
            },
            "/faces": {
                "post": {
                    "summary": "Faces in original photos (Photofield >= 0.24): box, landmarks "
                    "and an L2-normalized embedding each; unreadable photos give no faces",
                    "requestBody": _multipart_images(),
                    "responses": {
                        "200": {
                            "description": "faces per image, in request order",
                            **_json({"$ref": "#/components/schemas/Faces"}),
                        },
                        **_errors(400, 413, 415, 500, 503),
                    },
                },
                "head": _readiness("face"),
            },
            "/health": {
                "get": {
                    "summary": "Liveness",
                    "responses": {"200": {"description": "alive", **_json(status)}},
                }
            },
            "/ready": {
                "get": {
                    "summary": "Readiness: models loaded and not shutting down",
                    "responses": {
                        "200": {"description": "ready", **_json(status)},
                        "503": {"description": "not ready", **_json(status)},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}},
                },
                "TextsRequest": {
                    "type": "object",
                    "required": ["texts"],
                    "properties": {"texts": {"type": "array", "items": {"type": "string"}}},
                },
                "TextEmbeddings": _list_of(
                    "texts",
                    ["text", *embedding_props],
                    {"text": {"type": "string"}, **embedding_props},
                ),
                "Faces": _list_of(
                    "images",
                    ["field", "filename", "faces"],
                    {
                        **part_props,
                        "faces": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["bbox", "confidence", "landmarks", *embedding_props],
                                "properties": {
                                    "bbox": {
                                        "type": "array",
                                        "items": {"type": "number"},
                                        "minItems": 4,
                                        "maxItems": 4,
                                    },
                                    "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                                    "landmarks": {
                                        "type": "array",
                                        "minItems": 5,
                                        "maxItems": 5,
                                        "items": {
                                            "type": "array",
                                            "items": {"type": "number"},
                                            "minItems": 2,
                                            "maxItems": 2,
                                        },
                                    },
                                    **embedding_props,
                                },
                            },
                        },
                    },
                ),
                "ImageEmbeddings": _list_of(
                    "images",
                    ["field", "filename", *embedding_props],
                    {**part_props, **embedding_props},
                ),
            }
        },
    }
