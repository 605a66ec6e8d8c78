"""The SDK against the server's own OpenAPI document: a route or a field the document has
and the SDK lacks fails here."""

from __future__ import annotations

import typing

import httpx

import lancer
from lancer import _calls, types
from conftest import Server

METHODS = {"get", "post", "put", "delete", "patch"}


def operations(document: dict) -> set:
    return {(method, path) for path, item in document["paths"].items() for method in item if method in METHODS}


def resolve(client: object, dotted: str) -> object:
    for part in dotted.split("."):
        client = getattr(client, part)
    return client


def test_every_operation_of_the_document_has_a_method_on_both_clients(server: Server) -> None:
    document = httpx.get(f"{server.url}/api/v1/openapi.json").json()
    missing = operations(document) - set(_calls.ROUTES) - _calls.BROWSER_ONLY
    assert not missing, f"routes the SDK lacks: {sorted(missing)}"
    stale = set(_calls.ROUTES) - operations(document)
    assert not stale, f"routes the SDK names that the server does not have: {sorted(stale)}"
    for dotted in _calls.ROUTES.values():
        for client in (lancer.Client(server.url), lancer.AsyncClient(server.url)):
            assert callable(resolve(client, dotted)), f"{type(client).__name__}.{dotted}"


def properties(schema: dict, schemas: dict) -> set:
    """A schema's fields, those of the schemas it is made of (``allOf``, a flattened
    struct) among them."""
    if "$ref" in schema:
        return properties(schemas[schema["$ref"].rsplit("/", 1)[1]], schemas)
    found = set(schema.get("properties", {}))
    for part in schema.get("allOf", []):
        found |= properties(part, schemas)
    return found


def test_every_field_of_the_documents_schemas_is_in_the_sdks_types(server: Server) -> None:
    schemas = httpx.get(f"{server.url}/api/v1/openapi.json").json()["components"]["schemas"]
    checked = []
    for name, schema in schemas.items():
        shape = getattr(types, name, None)
        documented = properties(schema, schemas)
        if shape is None or not documented:
            continue
        fields = set(typing.get_type_hints(shape))
        lacking = documented - fields
        assert not lacking, f"{name} lacks {sorted(lacking)}"
        checked.append(name)
    for expected in ("Task", "TaskSpec", "Pipeline", "ArtifactDetail", "Rows", "Version", "TaskProgress"):
        assert expected in checked, f"the document has no {expected} schema with properties: {sorted(schemas)}"


def test_the_sdks_failure_codes_are_the_documents(server: Server) -> None:
    schemas = httpx.get(f"{server.url}/api/v1/openapi.json").json()["components"]["schemas"]
    assert set(typing.get_args(types.FailureCode)) == set(schemas["FailureCode"]["enum"])
