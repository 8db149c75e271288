"""Describe the app's routes as OpenAPI 3.1, from their paths, methods and docstrings."""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from typing import Any

from starlette.routing import BaseRoute, Mount, Route

_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::[a-z]+)?}")

_PUBLIC = {"/healthz", "/metrics", "/openapi.json"}


def openapi(routes: Sequence[BaseRoute], version: str) -> dict[str, Any]:
    """The OpenAPI document for ``routes``."""
    paths: dict[str, dict[str, Any]] = {}
    for path, methods, endpoint in _walk(routes, ""):
        spec_path = _PARAM.sub(r"{\1}", path)
        doc = inspect.getdoc(endpoint) or ""
        summary, _, description = doc.partition("\n")
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PARAM.findall(path)
        ]
        for method in sorted(methods - {"HEAD"}):
            op: dict[str, Any] = {
                "summary": summary.strip() or endpoint.__name__,
                "operationId": f"{endpoint.__name__}_{method.lower()}",
                "parameters": params,
                "responses": {
                    "default": {
                        "description": "An error: {\"error\": {\"code\", \"message\", \"id\"}}",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    },
                    "200": {"description": "Success"},
                },
            }
            if description.strip():
                op["description"] = description.strip()
            if path in _PUBLIC:
                op["security"] = []
            paths.setdefault(spec_path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "edgenode", "version": version},
        "paths": paths,
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message", "id"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "id": {"type": "string"},
                            },
                        }
                    },
                }
            },
        },
    }


def _walk(routes: Sequence[BaseRoute], prefix: str) -> list[tuple[str, set[str], Any]]:
    found: list[tuple[str, set[str], Any]] = []
    for route in routes:
        if isinstance(route, Route) and route.include_in_schema:
            found.append((prefix + route.path, set(route.methods or {"GET"}), route.endpoint))
        elif isinstance(route, Mount):
            found.extend(_walk(route.routes, prefix + route.path))
    return found
