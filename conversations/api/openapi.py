"""GET /v1/openapi.json: the /v1 API described from the same pydantic models that validate it."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from django.http import HttpRequest, JsonResponse
from pydantic import BaseModel

from conversations.api.http import api_view
from conversations.api.protocol import (
    LEGACY_FIELDS,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
)

REF = "#/components/schemas/{model}"


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    schemas: dict[str, Any] = {}

    def ref(model: type[BaseModel]) -> dict[str, str]:
        schema = model.model_json_schema(ref_template=REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        return {"$ref": REF.format(model=model.__name__)}

    def error(description: str) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": errors}}}

    request = ref(ChatCompletionRequest)
    for name in LEGACY_FIELDS:
        schemas["ChatCompletionRequest"]["properties"].pop(name)
    errors = ref(ErrorResponse)
    auth_errors = {"401": error("Missing, invalid or revoked API key")}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "chatsite OpenAI-compatible API",
            "version": "1.0.0",
            "description": "Chat Completions as in OpenAI's API reference, served by the local model.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "paths": {
            "/v1/chat/completions": {
                "post": {
                    "operationId": "createChatCompletion",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": request}},
                    },
                    "responses": {
                        "200": {
                            "description": "A completion, or with stream=true a stream of chunks",
                            "content": {
                                "application/json": {"schema": ref(ChatCompletion)},
                                "text/event-stream": {"schema": ref(ChatCompletionChunk)},
                            },
                        },
                        "400": error("Invalid request (param names the field)"),
                        **auth_errors,
                        "404": error("Unknown model (code model_not_found)"),
                        "413": error("Request body too large"),
                        "415": error("Content-Type is not application/json"),
                        "429": error("The queue is full: retry after Retry-After seconds"),
                        "503": error("The model is still loading"),
                    },
                }
            },
            "/v1/models": {
                "get": {
                    "operationId": "listModels",
                    "responses": {
                        "200": {
                            "description": "The model and its aliases",
                            "content": {"application/json": {"schema": ref(ModelList)}},
                        },
                        **auth_errors,
                    },
                }
            },
            "/v1/models/{model}": {
                "get": {
                    "operationId": "retrieveModel",
                    "parameters": [
                        {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {
                        "200": {
                            "description": "One model",
                            "content": {"application/json": {"schema": ref(ModelCard)}},
                        },
                        **auth_errors,
                        "404": error("Unknown model (code model_not_found)"),
                    },
                }
            },
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }


@api_view("GET")
async def openapi_json(request: HttpRequest) -> JsonResponse:
    return JsonResponse(openapi_document())
