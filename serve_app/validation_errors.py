"""One line per pydantic validation error, naming the field and what it allows.

pydantic's own message for a typo ("Extra inputs are not permitted") names neither the
fields that exist nor, for a value out of range, the whole range. Every config read from a
file is checked through this: the app args (serve_app/config.py), the batch policy's
`user_config` (serve_app/batcher/policy.py) and a Serve config's deployment overrides
(serve_app/deploy_overrides.py), so a typo reads the same wherever it is made.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

NUMBER_KINDS = {int: "an int", float: "a number"}


@dataclass
class _Problem:
    """One field's line; `messages` holds several when the members of a union (Serve's
    `num_replicas`: an int or "auto") each refused the same value."""

    location: list[str]
    messages: list[str]
    types: list[str]  # pydantic's error types, one per message
    got: str  # ", got VALUE", or "" where the value is a whole section
    allowed: str | None = None

    def __str__(self) -> str:
        if len(self.messages) > 1:  # the union's members are the location's last parts
            field, message = ".".join(self.location[:-1]), " or ".join(self.messages)
        else:
            field, message = ".".join(self.location) or "(top level)", self.messages[0]
        allowed = f" (allowed: {self.allowed})" if self.allowed else ""
        return f"{field}: {message}{self.got}{allowed}"


def problem_lines(error: ValidationError, model: type[BaseModel]) -> list[str]:
    """`field: what is wrong, got VALUE (allowed: ...)` for each error validating `model`."""
    problems: dict[tuple[str, ...], _Problem | str] = {}
    for item in error.errors(include_url=False):
        location = [str(part) for part in item["loc"]]
        parent = _section(model, location[:-1]) if location else None
        if item["type"] == "extra_forbidden" and parent is not None:
            allowed = ", ".join(sorted(parent.model_fields))
            problems[tuple(location)] = f"unknown field {'.'.join(location)!r} (allowed: {allowed})"
            continue
        value = item.get("input")
        got = "" if isinstance(value, (dict, list)) else f", got {value!r}"
        union = (*location[:-1], got) if parent is None and len(location) > 1 else None
        earlier = problems.get(union) if union else None
        if isinstance(earlier, _Problem) and item["type"] not in earlier.types:
            earlier.messages.append(item["msg"])  # a union's next member (a new kind of error)
            earlier.types.append(item["type"])
            continue
        field_info = parent.model_fields.get(location[-1]) if parent is not None else None
        allowed = _allowed(field_info) if field_info is not None else None
        problem = _Problem(location, [item["msg"]], [item["type"]], got, allowed)
        problems[union if union and union not in problems else tuple(location)] = problem
    return [str(problem) for problem in problems.values()]


def _section(model: type[BaseModel], path: Sequence[str]) -> type[BaseModel] | None:
    """The model at a dotted path of nested sections, or None where it is not one."""
    for name in path:
        field_info = model.model_fields.get(name)
        nested = _model_of(field_info.annotation) if field_info is not None else None
        if nested is None:
            return None
        model = nested
    return model


def _model_of(annotation: object) -> type[BaseModel] | None:
    """The model a field holds: `Section` or `Section | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [arg for arg in typing.get_args(annotation) if _model_of(arg) is not None]
        return models[0] if len(models) == 1 else None
    return None


def _allowed(field_info: FieldInfo) -> str | None:
    """A numeric field's range, e.g. `an int in [1, 4096]`; None for any other field."""
    kind = NUMBER_KINDS.get(field_info.annotation)  # type: ignore[arg-type]
    if kind is None:
        return None
    low = high = None
    for bound in field_info.metadata:
        if isinstance(bound, annotated_types.Gt):
            low = f"({bound.gt}"
        elif isinstance(bound, annotated_types.Ge):
            low = f"[{bound.ge}"
        elif isinstance(bound, annotated_types.Lt):
            high = f"{bound.lt})"
        elif isinstance(bound, annotated_types.Le):
            high = f"{bound.le}]"
    if low and high:
        return f"{kind} in {low}, {high}"
    if low:
        return f"{kind} {'>' if low[0] == '(' else '>='} {low[1:]}"
    if high:
        return f"{kind} {'<' if high[-1] == ')' else '<='} {high[:-1]}"
    return kind
