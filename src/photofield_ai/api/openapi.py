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


_OPENAI_ERROR = {"$ref": "#/components/schemas/OpenAIError"}


def _openai_errors(*statuses: int) -> dict[str, Any]:
    return {
        str(s): {"description": "error", "content": {"application/json": {"schema": _OPENAI_ERROR}}}
        for s in statuses
    }


def _openai_schemas(model: str | None, dimensions: int | None) -> dict[str, Any]:
    inline_image = {
        "type": "string",
        "description": "a data URI (data:image/jpeg;base64,...) or bare base64; URLs are refused",
    }
    item = {
        "oneOf": [
            {"type": "string", "description": "a text"},
            {
                "type": "object",
                "description": 'a text: {"type": "text", "text": ...} or {"text": ...}',
                "required": ["text"],
                "properties": {"type": {"type": "string"}, "text": {"type": "string"}},
            },
            {
                "type": "object",
                "description": 'an image: {"type": "image", "image": ...} or {"image": ...}',
                "required": ["image"],
                "properties": {"type": {"type": "string"}, "image": inline_image},
            },
            {
                "type": "object",
                "description": 'an image as OpenAI content parts: {"type": "image_url", '
                '"image_url": {"url": ...}} or {"type": "input_image", "image_url": ...}',
                "required": ["image_url"],
                "properties": {
                    "type": {"type": "string"},
                    "image_url": {
                        "oneOf": [
                            inline_image,
                            {
                                "type": "object",
                                "required": ["url"],
                                "properties": {"url": inline_image},
                            },
                        ]
                    },
                },
            },
        ]
    }
    return {
        "OpenAIError": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["message", "type"],
                    "properties": {
                        "message": {"type": "string"},
                        "type": {"type": "string"},
                        "param": {"type": "string", "nullable": True},
                        "code": {"type": "string", "nullable": True},
                    },
                }
            },
        },
        "EmbeddingsRequest": {
            "type": "object",
            "required": ["input"],
            "properties": {
                "model": {
                    "type": "string",
                    "nullable": True,
                    "description": "the id from GET /v1/models; null or absent: that one",
                    **({"enum": [model, None]} if model else {}),
                },
                "input": {"oneOf": [item, {"type": "array", "items": item, "minItems": 1}]},
                "encoding_format": {
                    "type": "string",
                    "nullable": True,
                    "enum": ["float", "base64", None],
                },
                "dimensions": {
                    "type": "integer",
                    "nullable": True,
                    "description": "only the model's own",
                    **({"enum": [dimensions, None]} if dimensions else {}),
                },
                "user": {"type": "string", "nullable": True},
            },
        },
        "Embeddings": _openai_list(
            ["object", "index", "embedding"],
            {
                "object": {"type": "string", "enum": ["embedding"]},
                "index": {"type": "integer", "minimum": 0},
                "embedding": {
                    "description": "L2-normalized; base64: little-endian float32",
                    "oneOf": [
                        {"type": "array", "items": {"type": "number"}},
                        {"type": "string", "format": "byte"},
                    ],
                },
            },
            model={"type": "string"},
            usage={
                "type": "object",
                "required": ["prompt_tokens", "total_tokens"],
                "properties": {
                    "prompt_tokens": {"type": "integer", "minimum": 0},
                    "total_tokens": {"type": "integer", "minimum": 0},
                },
            },
        ),
        "Models": _openai_list(
            ["id", "object", "created", "owned_by"],
            {
                "id": {"type": "string"},
                "object": {"type": "string", "enum": ["model"]},
                "created": {"type": "integer"},
                "owned_by": {"type": "string"},
            },
        ),
    }


def _openai_list(
    required: list[str], properties: dict[str, Any], **fields: dict[str, Any]
) -> dict[str, Any]:
    """An OpenAI list body, `{"object": "list", "data": [item, ...], **fields}`: `_list_of`
    with OpenAI's envelope around it."""
    body = _list_of("data", required, properties)
    body["required"] = ["object", "data", *fields]
    body["properties"] = {
        "object": {"type": "string", "enum": ["list"]},
        **body["properties"],
        **fields,
    }
    return body


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


def openapi_document(model: str | None = None, dimensions: int | None = None) -> dict[str, Any]:
    """The document; with the served `model` id and its `dimensions`, /v1/embeddings' request
    schema names the only values it takes."""
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
            "/v1/embeddings": {
                "post": {
                    "summary": "OpenAI-compatible embeddings of texts and inline images, in one "
                    "request if need be",
                    "requestBody": {
                        "required": True,
                        **_json({"$ref": "#/components/schemas/EmbeddingsRequest"}),
                    },
                    "responses": {
                        "200": {
                            "description": "embeddings in input order",
                            **_json({"$ref": "#/components/schemas/Embeddings"}),
                        },
                        **_openai_errors(400, 401, 404, 413, 415, 422, 500, 503),
                    },
                }
            },
            "/v1/models": {
                "get": {
                    "summary": "The model /v1/embeddings serves",
                    "responses": {
                        "200": {
                            "description": "one model",
                            **_json({"$ref": "#/components/schemas/Models"}),
                        },
                        **_openai_errors(401),
                    },
                }
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
                **_openai_schemas(model, dimensions),
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
