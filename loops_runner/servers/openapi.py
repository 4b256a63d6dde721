"""OpenAPI documents built from the shared wire models.

The servers parse request bodies by hand (cheap, and every refusal gets the
spec's error shape), so FastAPI cannot see the body models. Routes declare
them with ``json_body(Model)`` (their ``openapi_extra``) and their answers
with ``answers({202: Model, "4XX": ErrorBody})`` (their ``responses``);
``install_openapi`` then puts the referenced models' JSON schemas into
``components/schemas`` and replaces FastAPI's ``HTTPValidationError`` (which
none of our servers ever sends) with the server's real error body. Fuzzers
(schemathesis) and client generators read these documents, so they must say
what the servers do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from pydantic import BaseModel, TypeAdapter
from starlette.routing import Match

SCHEMA_REF = "#/components/schemas/{model}"
# Models named by ``json_body``; wire model names are unique across the package.
_BODY_MODELS: dict[str, type[BaseModel]] = {}


def json_body(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads ``model`` as its JSON body by hand."""
    _BODY_MODELS[model.__name__] = model
    return {"requestBody": {"required": required, "content": {"application/json": {
        "schema": {"$ref": SCHEMA_REF.format(model=model.__name__)}}}}}


def answers(models: dict[int | str, Any]) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: status (or ``"4XX"``) -> wire model (or a union)."""
    return {status: {"model": model} for status, model in models.items()}


def header(name: str, description: str) -> dict[str, Any]:
    """An optional request header a route reads by hand, as an OpenAPI parameter."""
    return {"name": name, "in": "header", "required": False, "description": description,
            "schema": {"type": "string"}}


def install_openapi(app: FastAPI, error_model: type[BaseModel]) -> None:
    """Replace ``app.openapi`` with one that declares the hand-parsed bodies.

    ``error_model`` is what the server sends for a 422 it raises itself; it
    replaces FastAPI's ``HTTPValidationError`` everywhere.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = get_openapi(title=app.title, version=app.version, routes=app.routes,
                               separate_input_output_schemas=False)
        body_models = _collect_body_models(document)
        components = document.setdefault("components", {}).setdefault("schemas", {})
        for model in [*body_models, error_model]:
            _add_schema(components, model)
        _replace_validation_error(document, error_model.__name__)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _collect_body_models(document: dict[str, Any]) -> list[type[BaseModel]]:
    names = []
    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            body = operation.get("requestBody") if isinstance(operation, dict) else None
            ref = (body or {}).get("content", {}).get("application/json", {}).get(
                "schema", {}).get("$ref", "")
            if ref:
                names.append(ref.rsplit("/", 1)[-1])
    return [_BODY_MODELS[name] for name in dict.fromkeys(names) if name in _BODY_MODELS]


def _add_schema(components: dict[str, Any], model: type[BaseModel]) -> None:
    schema = TypeAdapter(model).json_schema(ref_template=SCHEMA_REF, mode="validation")
    for name, definition in schema.pop("$defs", {}).items():
        components.setdefault(name, _base64_bytes(definition))
    components[model.__name__] = _base64_bytes(schema)


def _base64_bytes(schema: Any) -> Any:
    """``bytes`` fields travel as base64 text in our JSON bodies (OpenAPI's ``byte``)."""
    if isinstance(schema, dict):
        if schema.get("format") == "binary" and schema.get("type") == "string":
            schema = {**schema, "format": "byte"}
        return {key: _base64_bytes(value) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_base64_bytes(item) for item in schema]
    return schema


def _replace_validation_error(document: dict[str, Any], error_name: str) -> None:
    ref = SCHEMA_REF.format(model=error_name)
    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict):
                continue
            response = operation.get("responses", {}).get("422")
            if response is None:
                continue
            content = response.get("content", {}).get("application/json", {})
            if content.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                response["description"] = "Invalid request (the field and the limit)"
                content["schema"] = {"$ref": ref}
    schemas = document.get("components", {}).get("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)


CATCH_ALL_PATH = "/{path:path}"
PROBED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """The methods other routes accept on this path (none: the path is not ours).

    A catch-all route matches every method, so Starlette never answers 405 by
    itself; the catch-all (at ``CATCH_ALL_PATH``) asks this to tell "wrong
    method" from "unknown path". Each method is probed against the app's routes
    (included routers too), so nothing here depends on how they were added.
    """
    routes = [route for route in app.router.routes
              if getattr(route, "path", None) != CATCH_ALL_PATH]
    allowed = []
    for method in PROBED_METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in routes):
            allowed.append(method)
    return allowed


def add_catch_all(app: FastAPI, *, wrong_method: Callable[[str, dict[str, str]], Response],
                  unknown_path: Callable[[str, str], Response]) -> None:
    """Answer every request no other route takes, in the server's own error shape.

    A path another route serves with other methods gets
    ``wrong_method(message, headers)`` (the server's 405, with ``Allow``); any
    other path gets ``unknown_path(method, path)``. Add it after the other
    routes: it matches everything.
    """

    @app.api_route(CATCH_ALL_PATH, methods=list(PROBED_METHODS), include_in_schema=False)
    async def catch_all(path: str, request: Request) -> Response:
        allowed = allowed_methods(app, request)
        if allowed:
            return wrong_method(f"{request.method} is not allowed on /{path} (allowed: "
                                f"{', '.join(allowed)})", {"Allow": ", ".join(allowed)})
        return unknown_path(request.method, path)

    _ = catch_all
