"""Checks every message the server writes against the official ACP JSON Schema.

Params and results are validated against their own definitions, chosen by method (the
schema's root is an anyOf not tied to the method, so validating against it would
accept nearly anything). Methods only in the unstable schema (session/fork) use it.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas" / "acp"


@cache
def _doc(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / name).read_text())


@cache
def _validator(schema: str, definition: str) -> Draft202012Validator:
    doc = _doc(schema)
    return Draft202012Validator(
        {"$schema": doc["$schema"], "$defs": doc["$defs"], "$ref": f"#/$defs/{definition}"}
    )


@cache
def _definition(method: str, side: str, suffix: str) -> tuple[str, str] | None:
    for schema in ("schema.json", "schema.unstable.json"):
        for name, body in _doc(schema)["$defs"].items():
            if (
                body.get("x-method") == method
                and body.get("x-side") == side
                and name.endswith(suffix)
            ):
                return schema, name
    return None


class WireError(AssertionError):
    pass


_VALID: set[tuple[str, str, str]] = set()
"""(schema, definition, JSON text) found valid: validation is a pure function of them,
and a flood of identical answers need not pay jsonschema 20,000 times."""


def validate(definition: str, value: Any, schema: str = "schema.json") -> None:
    key = (schema, definition, json.dumps(value, sort_keys=True))
    if key in _VALID:
        return
    errors = sorted(_validator(schema, definition).iter_errors(value), key=lambda e: list(e.path))
    if errors:
        raise WireError(
            f"{definition} does not validate: {errors[0].message} "
            f"at {list(errors[0].path)}\n{value!r}"[:2000]
        )
    if len(_VALID) > 50_000:
        _VALID.clear()
    _VALID.add(key)


class WireChecker:
    """Feed it what the client sent and what the server wrote, in order."""

    def __init__(self) -> None:
        self.requests: dict[Any, list[str]] = {}
        """Every method sent under each id: a client may reuse an id once answered."""
        self.checked = 0

    def sent(self, message: dict[str, Any]) -> None:
        if "method" not in message or "id" not in message:
            return
        request_id = message["id"]
        # A null id is a request too (JSON-RPC discourages it; ACP allows it).
        if request_id is None or (isinstance(request_id, int | str) and request_id is not True):
            self.requests.setdefault(request_id, []).append(message["method"])

    def received(self, message: dict[str, Any]) -> None:
        if message.get("jsonrpc") != "2.0":
            raise WireError(f"not JSON-RPC 2.0: {message!r}")
        self.checked += 1
        if "method" in message:
            method = message["method"]
            if method.startswith("_"):
                return
            suffix = "Request" if "id" in message else "Notification"
            found = _definition(method, "client", suffix) or _definition(method, "protocol", suffix)
            if found is None:
                raise WireError(
                    f"the server sent {method}, which ACP does not define for the client side"
                )
            schema, name = found
            validate(name, message.get("params"), schema)
            return
        if "id" not in message:
            raise WireError(f"a response without an id: {message!r}")
        validate("RequestId", message["id"])
        if isinstance(message["id"], bool):
            raise WireError(f"a boolean response id: {message!r}")
        if "error" in message:
            if "result" in message:
                raise WireError(f"both result and error: {message!r}")
            validate("Error", message["error"])
            return
        if "result" not in message:
            raise WireError(f"neither result nor error: {message!r}")
        methods = self.requests.get(message["id"])
        if not methods:
            raise WireError(f"a result for an id the client never used: {message!r}")
        problems: list[str] = []
        for method in dict.fromkeys(methods):
            if method.startswith("_"):
                return
            found = _definition(method, "agent", "Response")
            if found is None:
                problems.append(f"no schema definition for the result of {method}")
                continue
            schema, name = found
            try:
                validate(name, message["result"], schema)
                return
            except WireError as exc:
                problems.append(str(exc))
        raise WireError("; ".join(problems))
