"""The one place client input is parsed: JSON bodies, fields, query and path parameters.

Everything a client sends passes these rules before a capability sees it, so every route
refuses the same input the same way (400, naming the field):

- JSON is strict UTF-8, nests at most ``MAX_DEPTH`` levels, and holds no NaN, Infinity,
  number that is not finite (``1e999``), integer outside 64 bits, or string with a lone
  surrogate (``"\\ud800"``);
- query parameters and path parameters are strict UTF-8 without NUL;
- names and paths that reach a file system fit it: ``NAME_MAX`` bytes a component,
  ``PATH_MAX`` bytes in all.

Responses are encoded by ``dumps``, which never emits NaN or Infinity.
"""

from __future__ import annotations

import json as _json
import logging
import math
import re
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import unquote_to_bytes

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from edgenode.errors import InvalidJson, ValidationFailed

log = logging.getLogger("edgenode.api")

T = TypeVar("T")

#: How deeply arrays and objects may nest in a request body.
MAX_DEPTH = 64
#: The integers JSON may carry: what SQLite, the store and the rest of the node hold (64 bits).
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
#: Bytes in one path component (Linux ``NAME_MAX``).
NAME_MAX = 255
#: Bytes in a whole path (Linux ``PATH_MAX`` less its terminating NUL).
PATH_MAX = 4095

# A JSON string (possessive, so an unterminated one cannot backtrack).
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"')
_NOT_BRACKETS = bytes(range(256)).translate(None, b"[]{}")
_NOT_BRACKETS_OR_QUOTES = bytes(range(256)).translate(None, b'[]{}"')
_SQUARE = bytes.maketrans(b"{}", b"[]")
# A surrogate pair as \u escapes (lower case): a high one followed by a low one.
_SURROGATE_PAIR = re.compile(rb"\\ud[89ab][0-9a-f]{2}\\ud[c-f][0-9a-f]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")
_INT_DIGITS = len(str(INT_MIN))
# 19 digits in a row may leave 64 bits (or, in a mantissa, a float); a 3-digit exponent may overflow.
# Found by mapping the text to its number shape (digits to 0; e, E, + and - to e, so that "e000"
# also finds "e+000") and plain substring searches; a false alarm only costs the number hooks.
# The same map keeps backslashes, "u" and "d" (either case), for the surrogate escape search.
_SHAPE = bytes(b"0"[0] if chr(c).isdigit() and c < 128 else b"e"[0] if c in b"eE+-" else b"d"[0] if c in b"dD"
               else c if c in b"\\u" else b" "[0] for c in range(256))
_BIG_NUMBERS = (b"0" * 19, b"e000")


class _Refused:
    """Stands in for a number the decoder met but the node does not take, until its field is named."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class _Decoder(_json.JSONDecoder):
    """The standard decoder, with numbers the node does not take left as ``_Refused`` markers.

    Without ``numbers`` only NaN and Infinity are looked at: right when the text has no number
    long enough to leave 64 bits or to overflow a float (the hooks cost a call per number).
    """

    def __init__(self, *, numbers: bool) -> None:
        self.refused = False
        if numbers:
            super().__init__(parse_int=self._int, parse_float=self._float, parse_constant=self._constant)
        else:
            super().__init__(parse_constant=self._constant)

    def _int(self, text: str) -> int | _Refused:
        if len(text) <= _INT_DIGITS:
            value = int(text)
            if INT_MIN <= value <= INT_MAX:
                return value
        return self._refuse(f"must be an integer between {INT_MIN} and {INT_MAX}")

    def _float(self, text: str) -> float | _Refused:
        value = float(text)
        return value if math.isfinite(value) else self._refuse("must be a finite number")

    def _constant(self, text: str) -> _Refused:
        return self._refuse(f"must be a finite number ({text} is not JSON)")

    def _refuse(self, reason: str) -> _Refused:
        self.refused = True
        return _Refused(reason)


def parse_json(raw: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value in ``raw``.

    InvalidJson when it is not strict JSON (or nests too deeply); ValidationFailed naming the
    field that holds a value the node does not take.
    """
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidJson(f"the body is not UTF-8: byte {exc.start} is invalid ({exc.reason})") from None
        data = raw
    else:
        try:
            text, data = raw, raw.encode()
        except UnicodeEncodeError:
            raise InvalidJson("the text holds a lone surrogate: it is not Unicode") from None
    check_depth(data, max_depth)
    shape = data.translate(_SHAPE)
    decoder = _Decoder(numbers=any(big in shape for big in _BIG_NUMBERS))
    try:
        value = decoder.decode(text)
    except ValueError as exc:  # JSONDecodeError, or a number Python will not convert
        raise InvalidJson(f"malformed JSON: {exc}") from None
    except RecursionError:  # check_depth bounds nesting; kept so that no JSON can reach a 500
        raise InvalidJson(f"JSON nests deeper than {max_depth} levels") from None
    # Walk the value only when the text says there is something to find.
    if decoder.refused or _may_hold_surrogate(data, shape):
        found = _first_refused(value)
        if found is not None:
            where, reason = found
            raise ValidationFailed(f"{where} {reason}", field=where)
    return value


def _may_hold_surrogate(data: bytes, shape: bytes) -> bool:
    """Whether decoding ``data`` may give a string with a lone surrogate (never False when it does)."""
    if b"\\ud" not in shape:
        return False
    if b"\\\\" in shape:  # an escaped backslash: "\\ud800" is text, not an escape; let the walk decide
        return True
    # Every backslash starts an escape here: once the pairs are gone, any surrogate escape left is lone.
    return b"\\ud" in _SURROGATE_PAIR.sub(b"", data.lower())


def check_depth(raw: bytes, max_depth: int = MAX_DEPTH) -> None:
    """Refuse JSON whose arrays and objects nest deeper than ``max_depth``.

    Runs before decoding, so a thousand-level array never reaches a recursive parser. Works on
    the brackets outside strings at C speed: each pass removes every innermost ``[]`` pair,
    that is one level, so a document still shrinking after ``max_depth`` passes is too deep.
    """
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return
    # Fast path: drop escaped backslashes and quotes, keep only brackets and quotes, drop the
    # quote pairs left by strings. No quote left means no string held a bracket.
    brackets = raw.replace(b"\\\\", b"").replace(b'\\"', b"").translate(_SQUARE, _NOT_BRACKETS_OR_QUOTES)
    brackets = brackets.replace(b'""', b"")
    if b'"' in brackets:
        brackets = _STRING.sub(b"", raw).translate(_SQUARE, _NOT_BRACKETS)
    for _ in range(max_depth):
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            return  # all gone, or unbalanced: the decoder says what is wrong
        brackets = shorter
    if brackets.replace(b"[]", b"") != brackets:
        raise InvalidJson(f"JSON nests deeper than {max_depth} levels")


def _first_refused(value: Any) -> tuple[str, str] | None:
    for where, item in _walk(value):
        if isinstance(item, _Refused):
            return where or "body", item.reason
        if isinstance(item, str) and _SURROGATE.search(item):
            return where or "body", "holds a lone surrogate (\\ud800-\\udfff): strings must be valid Unicode"
    return None


def _walk(value: Any) -> Iterator[tuple[str, Any]]:
    """Every value inside ``value`` (keys included, as strings) with its dotted path."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, item = stack.pop()
        yield where, item
        if isinstance(item, dict):
            for key, child in reversed(item.items()):
                label = _label(key)
                path = f"{where}.{label}" if where else label
                stack.append((path, child))
                stack.append((path, key))
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", child) for i, child in reversed(list(enumerate(item))))


def _label(key: str) -> str:
    """A key as it may appear in an error's ``field``: surrogates escaped, long keys cut."""
    key = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", key)
    return key if len(key) <= 64 else key[:60] + "..."


# -- fields ------------------------------------------------------------------------------


_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", dict: "an object",
               list: "an array"}


def field(data: dict[str, Any], name: str, kind: type[T] | tuple[type, ...], default: Any = ..., *,
          required: bool = False, lo: float | None = None, hi: float | None = None,
          max_len: int | None = None) -> Any:
    """``data[name]`` checked against ``kind`` (and ``lo``/``hi``, ``max_len``); 400 naming the field.

    A missing or null field is ``default``, or refused when there is none (or ``required``).
    ``lo``/``hi`` bound numbers, ``max_len`` the length of strings and arrays.
    """
    if name not in data or data[name] is None:
        if required or default is ...:
            raise ValidationFailed(f"field {name!r} is required", field=name)
        return default
    value = data[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise ValidationFailed(f"field {name!r} must be {' or '.join(_KIND_NAMES.get(k, k.__name__) for k in kinds)}",
                               field=name)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValidationFailed(f"field {name!r} must be a finite number", field=name)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = (f"between {lo} and {hi}" if lo is not None and hi is not None
                      else f"at least {lo}" if lo is not None else f"at most {hi}")
            raise ValidationFailed(f"field {name!r} must be {bounds}", field=name)
    if max_len is not None and isinstance(value, (str, list, dict)) and len(value) > max_len:
        raise ValidationFailed(f"field {name!r} is longer than {max_len}", field=name)
    return value


def check_name(value: str, name: str) -> str:
    """``value`` if a file system takes it as one component: no NUL or '/', at most NAME_MAX bytes."""
    if "\x00" in value or "/" in value:
        raise ValidationFailed(f"{name} may not hold NUL or '/'", field=name)
    if len(_utf8(value, name)) > NAME_MAX:
        raise ValidationFailed(f"{name} is longer than {NAME_MAX} bytes", field=name)
    return value


def check_path(value: str, name: str) -> str:
    """``value`` if a file system takes it as a path: no NUL, NAME_MAX bytes a component, PATH_MAX in all."""
    if "\x00" in value:
        raise ValidationFailed(f"{name} may not hold NUL", field=name)
    if len(_utf8(value, name)) > PATH_MAX:
        raise ValidationFailed(f"{name} is longer than {PATH_MAX} bytes", field=name)
    for part in value.split("/"):
        if len(part.encode()) > NAME_MAX:
            raise ValidationFailed(f"{name} has a component longer than {NAME_MAX} bytes", field=name)
    return value


def _utf8(value: str, name: str) -> bytes:
    try:
        return value.encode()
    except UnicodeEncodeError:
        raise ValidationFailed(f"{name} holds a lone surrogate: it must be valid Unicode", field=name) from None


# -- query and path parameters -------------------------------------------------------------

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def query_int(request: Request, name: str, default: int, *, lo: int, hi: int) -> int:
    """The integer query parameter ``name`` (``default`` when absent), between ``lo`` and ``hi``."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    raw = raw.strip()
    digits = raw.removeprefix("-")
    if not (digits.isascii() and digits.isdigit()) or len(digits) > _INT_DIGITS:
        raise ValidationFailed(f"{name} must be an integer between {lo} and {hi}", field=name)
    value = int(raw)
    if not lo <= value <= hi:
        raise ValidationFailed(f"{name} must be between {lo} and {hi}", field=name)
    return value


def query_bool(request: Request, name: str, default: bool = False) -> bool:
    """The yes/no query parameter ``name``: 1/true/yes/on or 0/false/no/off (empty is no)."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValidationFailed(f"{name} must be true or false", field=name)


def query_str(request: Request, name: str, default: str | None = None, *, max_len: int = PATH_MAX) -> str | None:
    """The text query parameter ``name`` (``default`` when absent or empty), at most ``max_len`` characters."""
    raw = request.query_params.get(name)
    if not raw:
        return default
    if len(raw) > max_len:
        raise ValidationFailed(f"{name} is longer than {max_len} characters", field=name)
    return raw


def _decode_param(raw: bytes, what: str) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationFailed(f"{what} is not UTF-8", field=what) from None
    if "\x00" in text:
        raise ValidationFailed(f"{what} may not hold NUL", field=what)
    return text


def check_query(query_string: bytes) -> None:
    """Refuse a query string whose names or values are not UTF-8 or hold NUL (naming the parameter)."""
    if not query_string:
        return
    for pair in query_string.split(b"&"):
        raw_name, _, raw_value = pair.partition(b"=")
        name = _decode_param(unquote_to_bytes(raw_name.replace(b"+", b" ")), "query parameter name")
        _decode_param(unquote_to_bytes(raw_value.replace(b"+", b" ")), name or "query parameter")


def check_path_params(params: dict[str, Any], path_like: set[str]) -> None:
    """Refuse path parameters with NUL, names longer than NAME_MAX bytes, and paths (``path_like``)
    that break the file system's limits."""
    for name, value in params.items():
        if not isinstance(value, str):
            continue
        if name in path_like:
            check_path(value, name)
        else:
            check_name(value, name)


def guard_params(app: ASGIApp, path_like: set[str]) -> ASGIApp:
    """Wrap a route's ASGI app so its query and path parameters pass the parsing rules first."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            check_query(scope.get("query_string", b""))
            check_path_params(scope.get("path_params", {}), path_like)
        await app(scope, receive, send)

    guarded.edgenode_guarded = True  # type: ignore[attr-defined]
    return guarded


# -- responses -------------------------------------------------------------------------------


def dumps(data: Any) -> bytes:
    """``data`` as compact UTF-8 JSON, never NaN or Infinity (those become null, with a warning)."""
    try:
        return _json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                           default=str).encode()
    except (ValueError, UnicodeEncodeError) as exc:
        # Stored or guest-made data the parser would have refused: answer valid JSON anyway.
        log.warning("response held a value JSON cannot carry; sent as null or U+FFFD", extra={"error": str(exc)})
        return _json.dumps(_sanitized(data), separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                           default=str).encode()


def _sanitized(value: Any) -> Any:
    return _map_leaves(value, lambda v: None if isinstance(v, float) and not math.isfinite(v)
                       else _SURROGATE.sub("\ufffd", v) if isinstance(v, str) else v)


def _map_leaves(value: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(value, dict):
        return {fn(str(k)): _map_leaves(v, fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_map_leaves(v, fn) for v in value]
    return fn(value)
