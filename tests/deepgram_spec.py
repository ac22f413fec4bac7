"""Validate Voice Agent v1 messages against Deepgram's own AsyncAPI spec.

The spec is read from the team's shared checkout (`<repo>/../shared/protocols/deepgram-asyncapi.yml`)
and never copied into the project; a clone without it skips the tests that need it.

Message schemas are found by the `type` their payload declares, not by message name: the names
do not always match the type (`AgentV1ReceiveFunctionCallResponse` carries `FunctionCallResponse`).
Client messages are `components.messages["subpackage_agent/v1.agent.v1-client-<n>-AgentV1<Name>"]`,
server messages `...-server-<n>-...`. The spec's `oneOf`s overlap (e.g. Deepgram listen providers
v1/v2), so they are validated as `anyOf`.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Literal

import pytest

SPEC_PATH = Path(__file__).resolve().parent.parent.parent / "shared" / "protocols" / "deepgram-asyncapi.yml"
SPEC_AVAILABLE = SPEC_PATH.is_file()
requires_spec = pytest.mark.skipif(not SPEC_AVAILABLE, reason=f"Deepgram AsyncAPI spec not found at {SPEC_PATH}")

SPEC_URI = "urn:deepgram:asyncapi"
_MESSAGE_KEY = re.compile(r"subpackage_agent/v1\.agent\.v1-(client|server)-\d+-AgentV1\w+")

Direction = Literal["client", "server"]


def _any_of(node: Any) -> Any:
    if isinstance(node, dict):
        return {("anyOf" if k == "oneOf" else k): _any_of(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_any_of(v) for v in node]
    return node


@functools.cache
def _spec() -> dict[str, Any]:
    import yaml

    with SPEC_PATH.open(encoding="utf-8") as f:
        return _any_of(yaml.safe_load(f))


def _resolve(ref: str) -> dict[str, Any]:
    node: Any = _spec()
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def _declared_types(schema: dict[str, Any]) -> list[str]:
    """The `type` values a payload schema allows, following $refs and anyOf branches."""
    if "$ref" in schema:
        return _declared_types(_resolve(schema["$ref"]))
    if "anyOf" in schema:
        return [t for branch in schema["anyOf"] for t in _declared_types(branch)]
    type_schema = schema.get("properties", {}).get("type", {})
    if "$ref" in type_schema:
        type_schema = _resolve(type_schema["$ref"])
    return list(type_schema.get("enum", []))


@functools.cache
def _validators(direction: Direction) -> dict[str, Any]:
    """Message `type` → jsonschema validator for one direction of `/v1/agent/converse`."""
    import jsonschema
    from referencing import Registry
    from referencing.jsonschema import DRAFT7

    registry = Registry().with_resource(SPEC_URI, DRAFT7.create_resource(_spec()))
    validators: dict[str, Any] = {}
    for key, message in _spec()["components"]["messages"].items():
        match = _MESSAGE_KEY.fullmatch(key)
        if not match or match[1] != direction:
            continue
        ref = message["payload"]["$ref"]
        for type_name in _declared_types({"$ref": ref}):  # binary audio payloads declare none
            schema = {"$ref": SPEC_URI + ref}
            validators[type_name] = jsonschema.Draft7Validator(schema, registry=registry)
    return validators


def message_types(direction: Direction) -> set[str]:
    return set(_validators(direction))


def _validate(direction: Direction, msg: dict[str, Any]) -> None:
    validators = _validators(direction)
    kind = msg.get("type")
    if kind not in validators:
        raise AssertionError(f"{direction} message type {kind!r} is not in the spec ({sorted(validators)})")
    validators[kind].validate(msg)


def validate_server_message(msg: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError (or AssertionError for an unknown type) if `msg` breaks the spec."""
    _validate("server", msg)


def validate_client_message(msg: dict[str, Any]) -> None:
    _validate("client", msg)
