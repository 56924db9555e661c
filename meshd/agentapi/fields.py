"""Reading untrusted JSON: bounded decoding and typed field access that names the field on failure.

Every accessor takes the path of the object it reads from (``"input[2].content[0]"``) and raises
:class:`~meshd.agentapi.errors.InvalidRequest` with ``param`` set to the full path of the bad field.
"""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

from meshd.agentapi.errors import InvalidRequest, TooLarge
from meshd.jsonbound import depth_exceeds, json_type

#: Deepest nesting of arrays/objects accepted in a request body (tool schemas are the deepest part).
MAX_DEPTH = 64


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def load_object(body: bytes, *, what: str = "request body", max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """Decode ``body`` as a JSON object no deeper than ``max_depth``."""
    if not body.strip():
        raise InvalidRequest(f"the {what} is empty; expected a JSON object", code="invalid_json")
    try:
        value = json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise TooLarge(f"the {what} is nested too deeply", code="too_deep") from None
    except ValueError as e:  # includes UnicodeDecodeError and over-long integers
        raise InvalidRequest(f"the {what} is not valid JSON: {_short(str(e))}", code="invalid_json") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"the {what} must be a JSON object, not {json_type(value)}", code="invalid_json")
    check_depth(body, max_depth, what)
    return value


def check_depth(body: bytes, max_depth: int, what: str) -> None:
    """Raise TooLarge when the JSON in ``body`` nests arrays/objects deeper than ``max_depth``
    (measured on the bytes by :func:`meshd.jsonbound.depth_exceeds`, in linear time)."""
    if depth_exceeds(body, max_depth):
        raise TooLarge(f"the {what} nests deeper than {max_depth} levels", code="too_deep")


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def bad(path: str, expected: str, value: Any) -> InvalidRequest:
    return InvalidRequest(f"{path} must be {expected}, not {json_type(value)}", param=path)


def opt_str(obj: dict[str, Any], key: str, path: str = "") -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad(join(path, key), "a string", value)
    return value


def req_str(obj: dict[str, Any], key: str, path: str = "", *, nonempty: bool = True) -> str:
    value = opt_str(obj, key, path)
    if value is None or (nonempty and not value):
        raise InvalidRequest(f"{join(path, key)} is required (a non-empty string)", param=join(path, key))
    return value


def opt_bool(obj: dict[str, Any], key: str, path: str = "") -> bool | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise bad(join(path, key), "true or false", value)
    return value


def opt_number(obj: dict[str, Any], key: str, path: str = "", *, low: float, high: float) -> float | int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad(join(path, key), "a number", value)
    if not low <= value <= high:
        raise InvalidRequest(f"{join(path, key)} must be between {low:g} and {high:g}", param=join(path, key))
    return value


def opt_int(obj: dict[str, Any], key: str, path: str = "", *, low: int, high: int) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(join(path, key), "an integer", value)
    if not low <= value <= high:
        raise InvalidRequest(f"{join(path, key)} must be between {low} and {high}", param=join(path, key))
    return value


def opt_list(obj: dict[str, Any], key: str, path: str = "", *, limit: int) -> list[Any] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise bad(join(path, key), "an array", value)
    if len(value) > limit:
        raise TooLarge(
            f"{join(path, key)} has {len(value)} entries; at most {limit} are accepted", param=join(path, key)
        )
    return value


def opt_dict(obj: dict[str, Any], key: str, path: str = "") -> dict[str, Any] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad(join(path, key), "an object", value)
    return value


def as_dict(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad(path, "an object", value)
    return value


def one_of(value: str, allowed: tuple[str, ...], path: str) -> str:
    if value not in allowed:
        raise InvalidRequest(
            f"{path} must be one of {', '.join(repr(a) for a in allowed)}, not {_short(repr(value), 60)}", param=path
        )
    return value


def tool_name(tool: dict[str, Any], path: str, seen: set[str]) -> str:
    """A tool's ``name``: at most 256 characters and used by no earlier tool of the request (added to ``seen``)."""
    name = req_str(tool, "name", path)
    if len(name) > 256:
        raise InvalidRequest(f"{path}.name is longer than 256 characters", param=f"{path}.name")
    if name in seen:
        raise InvalidRequest(f"{path}.name {name!r} is used by another tool", param=f"{path}.name")
    seen.add(name)
    return name
