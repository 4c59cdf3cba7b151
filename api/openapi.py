"""The OpenAPI document says what the API really answers: every error is
``application/problem+json`` (``Problem``), every route may answer 503 with ``Retry-After``
when a dependency is down, and a required header the handler checks itself (so that a missing
one is a 400 problem, not FastAPI's 422) is documented as required, with its 400.

Routes declare their own error statuses with ``responses=``; this only fixes the media type
and schema FastAPI gives them by default (``application/json``, ``HTTPValidationError``) and
adds what is true of every route.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI

from api.schemas import Problem

PROBLEM_JSON = "application/problem+json"
PROBLEM_REF = "#/components/schemas/Problem"
_DEFAULT_ERROR_REFS = {PROBLEM_REF, "#/components/schemas/HTTPValidationError"}
_CHECKED_HEADERS = {"idempotency-key", "x-psp-signature"}
"""Headers the API requires but checks in its own code (a missing one is a 400 problem)."""
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying",
        "schema": {"type": "integer", "minimum": 0},
    }
}
_UNAVAILABLE = {
    "description": "A dependency (Temporal, the database or Redis) does not answer: "
    "`temporal_unavailable`, `database_unavailable`, `redis_unavailable`, "
    "`internal_unavailable`; retry after `Retry-After`",
    "headers": _RETRY_AFTER,
}


def problems(descriptions: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """A route's (or a router's) ``responses=`` for its error statuses: each answers a
    ``Problem``, described by what it means there (``install_problem_openapi`` gives them the
    problem media type)."""
    return {status: {"model": Problem, "description": d} for status, d in descriptions.items()}


ADMIN_PROBLEMS = problems({401: "No X-Admin-Token header", 403: "Wrong admin token"})
"""What every admin router (``dependencies=[AdminDep]``) answers without the right token."""


def _problem_content() -> dict[str, Any]:
    return {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_REF}}}


def _is_default_error(response: dict[str, Any]) -> bool:
    content = response.get("content")
    if not content:
        return True
    schemas = [media.get("schema", {}).get("$ref") for media in content.values()]
    return all(ref in _DEFAULT_ERROR_REFS for ref in schemas)


def _fix_operation(op: dict[str, Any]) -> None:
    responses: dict[str, Any] = op.setdefault("responses", {})
    for param in op.get("parameters", []):
        if param.get("in") == "header" and param.get("name", "").lower() in _CHECKED_HEADERS:
            param["required"] = True
            # Declared `str | None` so the handler can answer a missing one itself; the
            # document says what a client must send: a string, never null.
            schema = param.setdefault("schema", {})
            branches = [b for b in schema.pop("anyOf", []) if b.get("type") != "null"]
            if len(branches) == 1:
                schema.update(branches[0])
            elif branches:
                schema["anyOf"] = branches
            responses.setdefault("400", {"description": f"Missing or bad {param['name']}"})
    if "requestBody" in op:
        responses.setdefault("400", {"description": "The body is not readable JSON"})
    responses.setdefault("503", dict(_UNAVAILABLE))
    for status, response in responses.items():
        if status[:1] not in ("4", "5") or not _is_default_error(response):
            continue
        response["content"] = _problem_content()
        if status in ("429", "503"):
            response.setdefault("headers", _RETRY_AFTER)


def install_problem_openapi(app: FastAPI) -> None:
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas.setdefault("Problem", Problem.model_json_schema())
        for path in schema.get("paths", {}).values():
            for method, op in path.items():
                if method in ("get", "put", "post", "patch", "delete"):
                    _fix_operation(op)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
