"""Redaction, declared once: the marker that stands in for personal data and secrets wherever
the bridge shows data (logs, results, dead-letter headers, CLI output), and the one function that
puts it there. Each caller says which keys are sensitive where it shows data: the log's key
parts (`observability/logging.py`), Icareus' form and answer fields (`icareus/errors.py`), the
subscriber's profile (`ops/explain.py`); the client redacts its sent form by position with the
same marker."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec
from pydantic import BaseModel

REDACTED = "<redacted>"

# Objects shown only as their fields: the domain models (msgspec Structs) and pydantic models.
MODELS = (BaseModel, msgspec.Struct)
# What redaction walks into (or, beyond its depth, hides whole).
CONTAINERS = (Mapping, list, tuple, *MODELS)


def as_fields(model: BaseModel | msgspec.Struct) -> Any:
    """A model's fields in JSON types: what redaction walks instead of the object."""
    if isinstance(model, BaseModel):
        return model.model_dump(mode="json")
    dump = getattr(model, "model_dump", None)
    return dump(mode="json") if dump is not None else msgspec.to_builtins(model)


def redact(
    value: Any,
    sensitive: Callable[[str], bool],
    *,
    keep_empty: bool = False,
    text: Callable[[str], str] | None = None,
    max_depth: int | None = None,
) -> Any:
    """A copy of `value` with the values of `sensitive` keys replaced by REDACTED, recursing into
    mappings, lists and tuples (as lists); a model (a domain object, or a pydantic model) is
    redacted as its fields (`as_fields`), never shown whole.

    `keep_empty`: a sensitive key whose value is None or "" keeps it (there is nothing to hide).
    `text`: applied to every other string (e.g. to mask e-mail addresses inside messages).
    `max_depth`: a container nested deeper than this is not shown at all (REDACTED)."""

    def walk(v: Any, depth: int) -> Any:
        if max_depth is not None and depth > max_depth:
            return REDACTED if isinstance(v, CONTAINERS) else v
        if isinstance(v, MODELS):
            v = as_fields(v)
        if isinstance(v, Mapping):
            return {
                k: (
                    REDACTED
                    if isinstance(k, str) and sensitive(k) and not (keep_empty and x in (None, ""))
                    else walk(x, depth + 1)
                )
                for k, x in v.items()
            }
        if isinstance(v, list | tuple):
            return [walk(x, depth + 1) for x in v]
        if text is not None and isinstance(v, str):
            return text(v)
        return v

    return walk(value, 0)


__all__ = ["CONTAINERS", "MODELS", "REDACTED", "as_fields", "redact"]
