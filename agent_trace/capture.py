"""Turn arbitrary Python values into JSON bytes for an event payload.

Capture runs on the caller's path at call time, so a later mutation of an
argument cannot change the record. It must never raise into agent code:
whatever cannot be serialized is recorded in a readable form instead.

Fast path: one ``orjson.dumps`` call (C speed). Only when that fails, or its
output might hold something to bound or hide (a long string, a redacted key,
a non-finite float), does a Python walk build a JSON-safe copy that:

- truncates strings longer than ``max_value_chars`` with a visible marker;
- cuts containers deeper than ``max_depth`` and longer than ``max_items``
  (values whose JSON fits in ``max_value_chars`` are kept whole);
- replaces cycles, unserializable objects (locks, sockets, generators, objects
  with a broken ``__repr__``) with short descriptive strings;
- writes bytes as ``{"$bytes": length}``, NaN/inf as ``"NaN"``/``"Infinity"``,
  integers beyond 64 bits as decimal strings, non-string keys with ``str()``,
  lone surrogates as backslash escapes;
- replaces the value under any key in ``redact_keys`` (exact,
  case-insensitive, any depth) with ``"[REDACTED]"``.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import PurePath
from typing import Any
from uuid import UUID

import orjson

__all__ = ["DEFAULT_REDACT_KEYS", "REDACTED", "CaptureOptions", "capture", "to_jsonable"]

DEFAULT_REDACT_KEYS = frozenset(
    {
        "api_key",
        "apikey",
        "authorization",
        "password",
        "secret",
        "access_token",
        "refresh_token",
        "cookie",
    }
)
REDACTED = "[REDACTED]"

# Dataclasses go through _default as dicts: orjson writes their fields in
# declaration order even with OPT_SORT_KEYS, and captured bytes must already be
# canonical (stores hash and keep them as they are).
_OPTS = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS
_NATIVE = (str, int, float, bool, type(None), datetime, date, time, UUID)
# Characters whose presence in a redact key rules out CaptureOptions._keys_match.
_JSON_SYNTAX = frozenset(b'"\\{}[],:' + bytes(range(32)))


@dataclass(frozen=True, slots=True)
class CaptureOptions:
    """Bounds and redaction for captured values."""

    max_value_chars: int = 20_000
    max_depth: int = 32
    max_items: int = 10_000
    redact_keys: frozenset[str] = DEFAULT_REDACT_KEYS
    # Derived at construction: one regex finds any redacted key in JSON output.
    _key_re: re.Pattern[bytes] | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False
    )
    # Whether _key_re matches output holding exactly these object keys (see
    # _keys_match); None when some redact key is not plain.
    _key_verdicts: dict[tuple[str, ...], bool] | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        keys = frozenset(k.lower() for k in self.redact_keys)
        object.__setattr__(self, "redact_keys", keys)
        if keys:
            escaped = [orjson.dumps(k)[1:-1] for k in sorted(keys)]
            alts = b"|".join(re.escape(e) for e in escaped)
            # Matched against the lowercased output: cheaper than re.IGNORECASE.
            object.__setattr__(self, "_key_re", re.compile(b'"(?:' + alts + b')":'))
            if all(
                e and e == k.encode() and not _JSON_SYNTAX.intersection(e)
                for e, k in zip(escaped, sorted(keys), strict=True)
            ):
                object.__setattr__(self, "_key_verdicts", {})

    def _keys_match(self, keys: tuple[str, ...], out: bytes) -> bool:
        """Would ``_key_re`` match ``out``, JSON whose object keys are exactly ``keys``?

        A match is a quote, a redact key, a quote and a colon. When the redact
        keys are plain (JSON writes them as they are, and they hold no quote,
        backslash or structural character), the second quote follows a plain
        character, so it is neither escaped nor a string's opening quote: it
        closes an object key. Every match thus ends an object key, the verdict
        depends only on the set of keys, and an object of those keys alone
        gets the same one.
        """
        key_re, verdicts = self._key_re, self._key_verdicts
        assert key_re is not None and verdicts is not None
        if len(verdicts) >= 1024:  # key sets are few (one per call shape), unless they are not
            return key_re.search(out.lower()) is not None
        try:
            skeleton = orjson.dumps(dict.fromkeys(keys, 0))
        except TypeError:  # not all str (or a lone surrogate): scan the output itself
            return key_re.search(out.lower()) is not None
        found = verdicts[keys] = key_re.search(skeleton.lower()) is not None
        return found

    def with_redact(self, extra: Iterable[str]) -> CaptureOptions:
        """These options plus more keys to redact."""
        return dataclasses.replace(self, redact_keys=self.redact_keys | frozenset(extra))


DEFAULT_OPTIONS = CaptureOptions()


def capture(
    value: Any, options: CaptureOptions = DEFAULT_OPTIONS, keys: tuple[str, ...] | None = None
) -> bytes:
    """Serialize ``value`` to JSON bytes with sorted keys. Never raises.

    ``keys``: exactly the object keys ``value``'s JSON holds, when the caller
    knows them (e.g. a dict of str, int, float, bool and None values); the
    redaction check then looks the set up instead of scanning the output.
    """
    try:
        out = orjson.dumps(value, default=_default, option=_OPTS)
    except TypeError:  # orjson.JSONEncodeError subclasses TypeError
        return _slow(value, options)
    if len(out) > options.max_value_chars:
        return _slow(value, options)
    key_re = options._key_re
    if key_re is not None:
        verdicts = options._key_verdicts
        if keys is None or verdicts is None:
            redact = key_re.search(out.lower()) is not None
        else:
            redact = verdicts.get(keys)
            if redact is None:
                redact = options._keys_match(keys, out)
        if redact:
            return _slow(value, options)
    # find(), not `in`: bytes.__contains__ first tries its operand as an int
    # and pays for the TypeError, which doubles the cost of this test.
    if out.find(b"null") >= 0 and _has_nonfinite(value, 0):
        return _slow(value, options)
    # orjson's result keeps its whole 4 KB output buffer allocated. A captured
    # payload waits in the recorder's queue, and thousands of those buffers
    # cost more in malloc and cache misses than an exact-size copy; b"%b" is
    # the cheapest way to one.
    return b"%b" % out


def to_jsonable(value: Any, options: CaptureOptions = DEFAULT_OPTIONS) -> Any:
    """The JSON-safe copy that :func:`capture` serializes on its slow path."""
    return _Walker(options).walk(value, 0)


def _slow(value: Any, options: CaptureOptions) -> bytes:
    try:
        return b"%b" % orjson.dumps(_Walker(options).walk(value, 0), option=_OPTS)
    except Exception as exc:  # the walker's output is JSON-safe; this is a last resort
        return orjson.dumps({"$unserializable": _describe(value), "error": _safe_str(exc)})


def _default(obj: Any) -> Any:
    """orjson's hook for types it does not know."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name, None) for f in dataclasses.fields(obj)}
    if isinstance(obj, (set, frozenset)):
        return _sorted_list(obj)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return {"$bytes": len(obj)}
    dump = getattr(obj, "model_dump", None)  # pydantic v2
    if callable(dump) and not isinstance(obj, type):
        try:
            # No serializer warnings: SDK generics (e.g. OpenAI's parsed
            # message) dump fine but warn on every call.
            return dump(mode="json", warnings=False)
        except TypeError:  # a model_dump without that option
            return dump(mode="json")
    if isinstance(obj, (Decimal, PurePath)):
        return str(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    # Anything else: fail the fast path so the walker records a safe repr.
    raise TypeError


def _has_nonfinite(value: Any, depth: int) -> bool:
    """Does ``value`` hold a NaN or infinity (which orjson writes as null)?"""
    # Plain loops: this runs on the hot path whenever a payload holds a null.
    if isinstance(value, float):
        return value != value or value in (math.inf, -math.inf)
    if depth > 64:
        return False
    if isinstance(value, dict):
        value = value.values()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = [getattr(value, f.name, None) for f in dataclasses.fields(value)]
    elif not isinstance(value, (list, tuple)):
        return False
    for item in value:
        if (
            item is not None
            and not isinstance(item, (str, int))
            and _has_nonfinite(item, depth + 1)
        ):
            return True
    return False


class _Walker:
    __slots__ = ("_active", "_opts")

    def __init__(self, options: CaptureOptions) -> None:
        self._opts = options
        # Containers on the current path only: a value shared by two branches
        # is fine, one that contains itself is a cycle.
        self._active: set[int] = set()

    def walk(self, v: Any, depth: int) -> Any:
        if v is None or isinstance(v, bool):
            return v
        if isinstance(v, str):
            return self._str(v)
        if isinstance(v, int):
            return _int(v)
        if isinstance(v, float):
            if math.isfinite(v):
                return v
            return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
        if isinstance(v, (datetime, date, time, UUID)):
            return v
        if isinstance(v, enum.Enum):
            return self.walk(v.value, depth)
        if isinstance(v, (bytes, bytearray, memoryview)):
            return {"$bytes": len(v)}
        if depth >= self._opts.max_depth:
            return f"<max depth {self._opts.max_depth} reached: {type(v).__name__}>"
        ident = id(v)
        if ident in self._active:
            return f"<cycle: {type(v).__name__}>"
        self._active.add(ident)
        try:
            return self._container(v, depth)
        finally:
            self._active.discard(ident)

    def _container(self, v: Any, depth: int) -> Any:
        if isinstance(v, Mapping):
            return self._mapping(v.items(), len(v), depth)
        if isinstance(v, (list, tuple)):
            return self._sequence(v, len(v), depth)
        if isinstance(v, (set, frozenset)):
            return self._sequence(_sorted_list(v), len(v), depth)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            fields = dataclasses.fields(v)
            items = ((f.name, getattr(v, f.name, None)) for f in fields)
            return self._mapping(items, len(fields), depth)
        try:
            converted = _default(v)
        except Exception:
            return _describe(v, self._opts.max_value_chars)
        return self.walk(converted, depth)

    def _mapping(self, items: Iterable[tuple[Any, Any]], n: int, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        redact = self._opts.redact_keys
        limit = self._opts.max_items
        for i, (k, val) in enumerate(items):
            if i >= limit:
                out["$truncated"] = f"{n - limit} more items"
                break
            key = self._key(k)
            if key in out:  # e.g. {1: .., "1": ..}: keep both, visibly
                key = f"{key} ({type(k).__name__})"
            if key.lower() in redact:
                out[key] = REDACTED
            else:
                out[key] = self.walk(val, depth + 1)
        return out

    def _sequence(self, seq: Iterable[Any], n: int, depth: int) -> list[Any]:
        out: list[Any] = []
        limit = self._opts.max_items
        for i, item in enumerate(seq):
            if i >= limit:
                out.append(f"<{n - limit} more items>")
                break
            out.append(self.walk(item, depth + 1))
        return out

    def _key(self, k: Any) -> str:
        if isinstance(k, str):
            return self._str(k)
        if isinstance(k, enum.Enum):
            k = k.value
        if k is None or isinstance(k, (bool, int, float)):
            return orjson.dumps(self.walk(k, 0)).decode().strip('"')
        if isinstance(k, (datetime, date, time)):
            return k.isoformat()
        return self._str(_describe(k, 200))

    def _str(self, s: str) -> str:
        limit = self._opts.max_value_chars
        if len(s) > limit:
            s = f"{s[:limit]}…[truncated {len(s) - limit} chars]"
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: keep them visible, not lost
            s = s.encode("utf-8", "backslashreplace").decode("utf-8")
        return s


def _int(v: int) -> int | str:
    if -(2**63) <= v < 2**64:
        return v
    try:
        return str(v)
    except ValueError:  # beyond sys.get_int_max_str_digits()
        return f"<int with {v.bit_length()} bits>"


def _sorted_list(values: Iterable[Any]) -> list[Any]:
    items = list(values)
    try:
        return sorted(items)
    except TypeError:
        return items


def _describe(obj: Any, limit: int = 1000) -> str:
    """A readable stand-in for an object that has no JSON form."""
    try:
        text = repr(obj)
    except Exception as exc:
        return f"<unrepresentable {type(obj).__qualname__}: {_safe_str(exc)}>"
    if not isinstance(text, str):
        return f"<unrepresentable {type(obj).__qualname__}>"
    if len(text) > limit:
        text = f"{text[:limit]}…[truncated {len(text) - limit} chars]"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _safe_str(exc: BaseException) -> str:
    try:
        return f"{type(exc).__name__}: {exc}"[:500]
    except Exception:
        return type(exc).__name__
