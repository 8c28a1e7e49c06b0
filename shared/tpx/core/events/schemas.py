"""The event catalogue: one JSON Schema (draft 2020-12) per event type, and a validator.

The canonical schemas are package data in `tpx/events/schemas/` (in the
repository: shared/events/schemas/), one file per type named
`<type without dev.tpx.>.v<N>.schema.json`, plus `common.v1.schema.json` with
the shared parts (envelope, CI identity, admin change, publisher, issuer) that
the others reference by `$id` (`urn:tpx:event:common:v1#/$defs/...`).
docs/events/README.md is the human catalogue.

Each schema validates a whole published CloudEvent, envelope and `data`.
`validate(event)` picks the schema by `type` (and by the version a
`dataschema` attribute names, if an event ever carries one; none is v1).

`jsonschema` (a test dependency) is imported only when a validator is built,
so importing this module costs nothing in the services.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from tpx.core.events import types as event_types

SCHEMA_SUFFIX = ".schema.json"
COMMON_ID = "urn:tpx:event:common:v1"
_ID_RE = re.compile(r"urn:tpx:event:(?P<type>dev\.tpx\.[a-z_]+\.[a-z_]+):v(?P<version>[1-9][0-9]*)")


def schema_id(event_type: str, version: int = 1) -> str:
    return f"urn:tpx:event:{event_type}:v{version}"


def file_name(event_type: str, version: int = 1) -> str:
    return f"{event_types.routing_key(event_type)}.v{version}{SCHEMA_SUFFIX}"


def default_folder() -> Path:
    """The schemas shipped with the package (tpx/events/schemas)."""
    return Path(str(resources.files("tpx.core.events").joinpath("schemas")))


def all_types() -> list[str]:
    """Every event type tpx.core.events.types declares."""
    return sorted(value for name, value in vars(event_types).items()
                  if name.isupper() and isinstance(value, str) and value.startswith(event_types.TYPE_PREFIX)
                  and name != "TYPE_PREFIX")


class EventSchemaError(ValueError):
    """An event does not match its schema (or has none). `path` is a JSON path such as `$.data.ci`."""

    def __init__(self, event_type: str | None, path: str, message: str, schema: str | None = None) -> None:
        self.event_type = event_type
        self.path = path
        self.schema = schema
        self.reason = message
        where = f" (schema {schema})" if schema else ""
        super().__init__(f"event {event_type or '<no type>'}{where} is invalid at {path}: {message}")


@dataclass(frozen=True)
class Catalogue:
    """The loaded schemas: event schemas by (type, version), every document by `$id`."""

    folder: Path
    documents: dict[str, dict[str, Any]]  # $id -> schema (common included)
    events: dict[tuple[str, int], dict[str, Any]]  # (type, version) -> schema

    def registry(self):
        from referencing import Registry, Resource

        return Registry().with_resources(
            (schema_id_, Resource.from_contents(document)) for schema_id_, document in self.documents.items())

    def validator(self, event_type: str, version: int = 1):
        from jsonschema import Draft202012Validator

        schema = self.events.get((event_type, version))
        if schema is None:
            known = ", ".join(sorted({t for t, _v in self.events}))
            raise EventSchemaError(event_type, "$.type", f"no v{version} schema for this type in {self.folder} "
                                                         f"(known types: {known})")
        return Draft202012Validator(schema, registry=self.registry(),
                                    format_checker=Draft202012Validator.FORMAT_CHECKER)


def load_schemas(folder: str | Path | None = None) -> Catalogue:
    """Read every `*.schema.json` of `folder` (default: the packaged schemas) and check their names.

    A file must be named after its `$id`: `urn:tpx:event:dev.tpx.token.issued:v1` lives in
    `token.issued.v1.schema.json`; the common definitions in `common.v1.schema.json`.
    """
    base = Path(folder) if folder is not None else default_folder()
    if not base.is_dir():
        raise FileNotFoundError(f"no event schema folder at {base}")
    documents: dict[str, dict[str, Any]] = {}
    events: dict[tuple[str, int], dict[str, Any]] = {}
    for path in sorted(base.glob(f"*{SCHEMA_SUFFIX}")):
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from None
        identifier = document.get("$id") if isinstance(document, dict) else None
        if not isinstance(identifier, str):
            raise ValueError(f"{path} has no $id")
        if identifier in documents:
            raise ValueError(f"{path}: the $id {identifier} is used twice")
        documents[identifier] = document
        if identifier == COMMON_ID:
            expected = "common.v1" + SCHEMA_SUFFIX
        else:
            match = _ID_RE.fullmatch(identifier)
            if match is None:
                raise ValueError(f"{path}: $id {identifier!r} is not urn:tpx:event:<type>:v<N>")
            event_type, version = match["type"], int(match["version"])
            events[(event_type, version)] = document
            expected = file_name(event_type, version)
        if path.name != expected:
            raise ValueError(f"{path}: a schema with $id {identifier} must be named {expected}")
    if COMMON_ID not in documents:
        raise ValueError(f"{base} has no common.v1{SCHEMA_SUFFIX} ({COMMON_ID})")
    return Catalogue(base, documents, events)


@lru_cache(maxsize=1)
def _default_catalogue() -> Catalogue:
    return load_schemas()


@lru_cache(maxsize=64)
def _default_validator(event_type: str, version: int):
    return _default_catalogue().validator(event_type, version)


def _version_of(event: Mapping[str, Any]) -> int:
    """v1 unless the event names another version of its type's schema in `dataschema`."""
    dataschema = event.get("dataschema")
    if dataschema is None:
        return 1
    match = _ID_RE.fullmatch(dataschema) if isinstance(dataschema, str) else None
    if match is None or match["type"] != event.get("type"):
        raise EventSchemaError(event.get("type"), "$.dataschema",
                               f"{dataschema!r} is not urn:tpx:event:<this type>:v<N>")
    return int(match["version"])


def validate(event: Mapping[str, Any], catalogue: Catalogue | None = None) -> None:
    """Raise EventSchemaError naming the event type, the schema and the failing JSON path.

    Validates the whole CloudEvent (envelope and data) against the schema of its `type`.
    """
    if not isinstance(event, Mapping):
        raise EventSchemaError(None, "$", f"an event is a JSON object, not {type(event).__name__}")
    event_type = event.get("type")
    if not isinstance(event_type, str):
        raise EventSchemaError(None, "$.type", "the event has no type")
    version = _version_of(event)
    validator = (catalogue.validator(event_type, version) if catalogue is not None
                 else _default_validator(event_type, version))
    errors = list(validator.iter_errors(dict(event)))
    if not errors:
        return
    from jsonschema.exceptions import best_match

    error = best_match(errors)
    more = f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    raise EventSchemaError(event_type, error.json_path, f"{_describe(error)}{more}", schema_id(event_type, version))


# What the schemas refuse as secrets (common.v1 secretString); never echoed in an error message.
_SECRET_RE = re.compile(r"tpx_[0-9A-Za-z]{46}|eyJ[0-9A-Za-z_-]+\.eyJ[0-9A-Za-z_-]+\.[0-9A-Za-z_-]*")


def _describe(error) -> str:
    """The error message, never echoing a secret the event may carry (messages quote the offending value)."""
    if error.validator == "not":
        return "contains a value that looks like a secret (a tpx token or a JWT); events never carry one"
    message = _SECRET_RE.sub("<redacted>", error.message)
    return message if len(message) <= 300 else message[:297] + "..."
