"""Turn arbitrary Python values into JSON bytes for an event payload.

Capture runs on the caller's path at call time, so a later mutation of an
argument cannot change the record. It must never raise into agent code:
whatever cannot be serialized is recorded in a readable form instead.

Fast path: one ``orjson.dumps`` call (C speed), then, for plain JSON-like
values, one pass over the value (:func:`_scan`) that looks only at the object
keys present, the floats and the strings that could hold a secret (other
types: checks on the output). Only when that fails, or the value holds
something to bound or hide (a long string, a redacted key, a non-finite
float, a secret), does a Python walk build a JSON-safe copy that:

- truncates strings longer than ``max_value_chars`` with a visible marker;
- cuts containers deeper than ``max_depth`` and longer than ``max_items``
  (values whose JSON fits in ``max_value_chars`` are kept whole);
- replaces cycles, unserializable objects (locks, sockets, generators, objects
  with a broken ``__repr__``) with short descriptive strings;
- writes bytes as ``{"$bytes": length}``, NaN/inf as ``"NaN"``/``"Infinity"``,
  integers beyond 64 bits as decimal strings, non-string keys with ``str()``,
  lone surrogates as backslash escapes;
- replaces the value under any key matching ``redact_keys`` (by the key's
  words, see :func:`key_words`; any depth) with ``"[REDACTED]"``, and the
  value of a ``(name, value)`` pair whose name matches (HTTP header lists);
- masks secrets inside strings: ``Bearer``/``Basic`` credentials, secret
  URL query parameters and ``user:password@`` userinfo, and strings shaped
  like well-known keys (``sk-…``, ``sk-ant-…``, ``AKIA…``, ``ghp_…``, …);
  then applies ``mask`` (``configure(mask=fn)``) to every string;
- cuts the whole payload at ``max_event_bytes`` with a visible marker: the
  walk stops there, so a huge value costs about that much work, not more.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import PurePath
from typing import Any
from uuid import UUID

import orjson

__all__ = [
    "DEFAULT_REDACT_KEYS",
    "REDACTED",
    "CaptureOptions",
    "capture",
    "key_words",
    "mask_secrets",
    "to_jsonable",
]

# Each entry is matched against the END of a key's words (see key_words):
# "token" redacts access_token and id_token but not token_count or max_tokens;
# "api_key" redacts x-api-key, apiKey and OPENAI_API_KEY but not keyword.
DEFAULT_REDACT_KEYS = frozenset(
    {
        "api_key",
        "apikey",
        "access_key",
        "private_key",
        "secret_key",
        "authorization",
        "password",
        "passwd",
        "secret",
        "token",
        "cookie",
        "credential",
        "credentials",
    }
)
REDACTED = "[REDACTED]"
DEFAULT_MAX_EVENT_BYTES = 2_000_000

_WORD_SPLIT = re.compile(r"[_\-. ]+")
_CAMEL = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+|[^A-Za-z0-9]+")


def key_words(key: str) -> tuple[str, ...]:
    """A key's words, lowercased: split at ``_ - .``, spaces and camelCase.

    ``"OPENAI_API_KEY"``, ``"x-api-key"`` and ``"apiKey"`` all end in
    ``("api", "key")``; ``"APIKey"`` is ``("api", "key")``.
    """
    words: list[str] = []
    for part in _WORD_SPLIT.split(key):
        if part:
            words.extend(w.lower() for w in _CAMEL.findall(part))
    return tuple(words)


# Secrets inside string values (any key). Each pattern keeps what names the
# secret (group 1) and replaces the secret itself.
_SECRET_NAME = (
    r"[A-Za-z0-9_.-]{0,40}(?:key|token|secret|passw(?:or)?d|pwd|signature|sig|auth|credentials?)"
)
_VALUE_PATTERNS = [
    # Authorization header values: "Bearer <token>", "Basic <base64>".
    re.compile(r"(?i)(\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{6,}"),
    # URL userinfo: scheme://user:password@host
    re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]{0,30}://[^\s:/?#@\"]{0,200}:)[^\s/?#@\"]{1,500}(?=@)"),
    # URL query parameters with a secret name: ?api_key=..., &token=...
    re.compile(r"(?i)([?&;]" + _SECRET_NAME + r"=)[^&#\s\"]+"),
    # Well-known key shapes.
    re.compile(
        r"()\b(?:sk-ant-[A-Za-z0-9_-]{16,}|sk-(?:proj-)?[A-Za-z0-9_-]{16,}|"
        r"AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}|"
        r"github_pat_[A-Za-z0-9_]{30,}|xox[abprs]-[A-Za-z0-9-]{10,}|"
        r"AIza[0-9A-Za-z_-]{35})"
    ),
]
# A cheap test on the serialized payload: could any of the above be in it?
# A few bytes.find calls (one regex alternation of the same literals costs
# several times as much): the shapes SPEC 4 names. The walk, once taken for
# any reason, masks every pattern above.
_QUERY_SECRET = re.compile(
    rb"[?&;][A-Za-z0-9_.-]{0,40}(?i:key|token|secret|pass|pwd|sig|auth|credential)"
    rb"[A-Za-z0-9_.-]{0,40}="
)


def _may_hold_secret(out: bytes) -> bool:
    find = out.find
    if find(b"sk-") >= 0 or find(b"earer ") >= 0 or find(b"AKIA") >= 0 or find(b"ghp_") >= 0:
        return True
    at = find(b"://")
    if at >= 0 and find(b"@", at) >= 0:
        return True
    return find(b"=") >= 0 and _QUERY_SECRET.search(out) is not None


def mask_secrets(text: str) -> str:
    """``text`` with credentials in it replaced by ``[REDACTED]`` (see the module doc)."""
    for pattern in _VALUE_PATTERNS:
        if pattern.search(text):
            text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


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
    #: One event's captured payload is cut at about this many bytes (a marker says so).
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    #: Applied to every captured string (``configure(mask=fn)``); raising redacts it.
    mask: Callable[[str], Any] | None = None
    # Derived at construction: one regex finds any redacted key in JSON output.
    _key_re: re.Pattern[bytes] | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False
    )
    # Whether _key_re matches output holding exactly these object keys (see
    # _keys_match); None when some redact key is not plain.
    _key_verdicts: dict[tuple[str, ...], bool] | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False
    )
    # Each redact key as words (matched against the end of a key's words), and
    # a cache of verdicts per key seen.
    _word_keys: frozenset[tuple[str, ...]] = dataclasses.field(
        default=frozenset(), init=False, repr=False, compare=False
    )
    _verdicts: dict[str, bool] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    # Object keys seen that redact nothing: one set.issuperset per dict (C
    # speed) clears a payload's keys once its call shape has been seen.
    _safe_keys: set[str] = dataclasses.field(
        default_factory=set, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        keys = frozenset(k.lower() for k in self.redact_keys)
        object.__setattr__(self, "redact_keys", keys)
        words = frozenset(w for w in (key_words(k) or (k,) for k in keys) if w)
        object.__setattr__(self, "_word_keys", words)
        if keys:
            # A key's words end in a redact key's words when its lowercased text
            # ends in those words with any separators between them (or none:
            # camelCase). A loose test: a match only sends the value to the walk.
            alts = b"|".join(
                b"[-_. ]*".join(re.escape(orjson.dumps(w)[1:-1]) for w in ws)
                for ws in sorted(words)
            )
            # Matched against the lowercased output: cheaper than re.IGNORECASE.
            # ":" ends an object key, "," the name in a (name, value) pair.
            object.__setattr__(self, "_key_re", re.compile(b"(?:" + alts + b')"[:,]'))
            escaped = [orjson.dumps(k)[1:-1] for k in sorted(keys)]
            if all(
                e and e == k.encode() and not _JSON_SYNTAX.intersection(e)
                for e, k in zip(escaped, sorted(keys), strict=True)
            ):
                object.__setattr__(self, "_key_verdicts", {})

    def redacts(self, key: str) -> bool:
        """Does ``key`` name a secret: do its words end with a redact key's words?"""
        verdicts = self._verdicts
        found = verdicts.get(key)
        if found is None:
            words = key_words(key) or (key.lower(),)
            found = any(words[len(words) - len(w) :] == w for w in self._word_keys)
            if len(verdicts) < 10_000:
                verdicts[key] = found
        return found

    def _keys_match(self, keys: tuple[str, ...], out: bytes) -> bool:
        """Would ``_key_re`` match ``out``, JSON whose object keys are exactly ``keys``?

        A match is a quote, a key ending in a redact key's words, a quote and a
        colon (or a comma: the name of a pair). When the redact
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

    def needs_walk(self, out: bytes) -> bool:
        """Must the walk look at this serialized value (secrets, size, a mask)?"""
        return self.mask is not None or len(out) > self.max_event_bytes or _may_hold_secret(out)


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
    if keys is None and options.mask is None:
        # Plain JSON-like values (dict, list, tuple, str, int, float, bool,
        # None): one pass over the value itself finds what the walk would
        # change, looking only at the keys, floats and strings present.
        found = _scan(value, options, 0)
        if found == _CLEAN:
            return b"%b" % out
        if found == _WALK:
            return _slow(value, options)
        # _OTHER: types the scan does not know; the checks on the output below.
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
    if options.needs_walk(out):
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
        out = b"%b" % orjson.dumps(_Walker(options).walk(value, 0), option=_OPTS)
    except Exception as exc:  # the walker's output is JSON-safe; this is a last resort
        return orjson.dumps({"$unserializable": _describe(value), "error": _safe_str(exc)})
    if len(out) > options.max_event_bytes * 2:
        # The walk cuts at max_event_bytes of values; keys and structure alone
        # can still exceed it. Keep a visible note instead of the payload.
        return orjson.dumps(
            {"$truncated": f"payload of {len(out)} bytes exceeds max_event_bytes"},
            option=_OPTS,
        )
    return out


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


_CLEAN, _WALK, _OTHER = 0, 1, 2
_SCALARS = (str, int, bool, type(None))


def _scan(value: Any, options: CaptureOptions, depth: int) -> int:
    """Would the walk change ``value``'s JSON? ``_CLEAN`` (no), ``_WALK`` (yes), or
    ``_OTHER`` (``value`` holds a type this scan leaves to the output checks).

    Exact for dicts with str keys, lists, tuples, str, int, float, bool and
    None, given that the output fits ``max_value_chars`` and no ``mask`` is
    set: a redacted key or (name, value) pair, a non-finite float, a string
    that may hold a secret (:func:`_str_may_hold_secret`) or a container
    deeper than ``max_depth`` is what the walk changes. Ints beyond 64 bits
    and lone surrogates make orjson fail, so they never get here.
    """
    kind = type(value)
    if kind is dict:
        if depth >= options.max_depth:
            return _WALK
        safe = options._safe_keys
        if not safe.issuperset(value):
            for key in value:
                if key in safe:
                    continue
                if type(key) is not str:
                    return _OTHER
                if options.redacts(key):
                    return _WALK
                if len(safe) < 10_000:
                    safe.add(key)
        items: Iterable[Any] = value.values()
    elif kind is list or kind is tuple:
        if depth >= options.max_depth:
            return _WALK
        if len(value) == 2 and type(value[0]) is str and options.redacts(value[0]):
            return _WALK  # a (name, value) pair naming a secret: HTTP header lists
        items = value
    elif kind is str:
        return _WALK if _str_may_hold_secret(value) else _CLEAN
    elif kind is float:
        return _CLEAN if value - value == 0.0 else _WALK  # NaN and inf give NaN
    elif kind in _SCALARS:
        return _CLEAN
    else:
        return _OTHER
    for item in items:
        kind = type(item)
        if kind is str:
            if len(item) >= 6 and _str_may_hold_secret(item):
                return _WALK
        elif kind is float:
            if item - item != 0.0:
                return _WALK
        elif kind is not int and kind is not bool and item is not None:
            found = _scan(item, options, depth + 1)
            if found:
                return found
    return _CLEAN


def _str_may_hold_secret(s: str) -> bool:
    """Could :func:`mask_secrets` change ``s``? Cheap and never wrong when False.

    Each test is a necessary part of a pattern in ``_VALUE_PATTERNS``,
    probed first with one character (``in`` on one character is a memchr):
    shorter than 6 characters nothing matches; key shapes need ``sk-``,
    ``xox``, ``gh``/``github_pat_`` with ``_``, or ``AKIA``/``ASIA``/``AIza``;
    userinfo needs ``://`` and ``@``; a query parameter ``=`` after ``?``,
    ``&`` or ``;``; an Authorization value ``bearer`` or ``basic`` in any case.
    """
    if len(s) < 6:
        return False
    if "-" in s and ("sk-" in s or "xox" in s):
        return True
    if "_" in s and "gh" in s:
        return True
    if "A" in s and ("AKIA" in s or "ASIA" in s or "AIza" in s):
        return True
    if "@" in s and "://" in s:
        return True
    if "=" in s and ("?" in s or "&" in s or ";" in s):
        return True
    if "b" in s or "B" in s:
        low = s.lower()
        return "bearer" in low or "basic" in low
    return False


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


_CUT = "<cut: the event reached max_event_bytes ({})>"


class _Walker:
    __slots__ = ("_active", "_budget", "_opts")

    def __init__(self, options: CaptureOptions) -> None:
        self._opts = options
        # Containers on the current path only: a value shared by two branches
        # is fine, one that contains itself is a cycle.
        self._active: set[int] = set()
        # Bytes of values still allowed in this payload (roughly: string
        # lengths plus a few bytes per item). At zero the walk stops.
        self._budget = options.max_event_bytes

    def walk(self, v: Any, depth: int) -> Any:
        self._budget -= 8
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
        opts = self._opts
        limit = opts.max_items
        for i, (k, val) in enumerate(items):
            if i >= limit:
                out["$truncated"] = f"{n - limit} more items"
                break
            if self._budget <= 0:
                out["$truncated"] = _CUT.format(opts.max_event_bytes)
                break
            key = self._key(k)
            if key in out:  # e.g. {1: .., "1": ..}: keep both, visibly
                key = f"{key} ({type(k).__name__})"
            if opts.redact_keys and opts.redacts(key):
                out[key] = REDACTED
            else:
                out[key] = self.walk(val, depth + 1)
        return out

    def _sequence(self, seq: Iterable[Any], n: int, depth: int) -> list[Any]:
        out: list[Any] = []
        opts = self._opts
        limit = opts.max_items
        for i, item in enumerate(seq):
            if i >= limit:
                out.append(f"<{n - limit} more items>")
                break
            if self._budget <= 0:
                out.append(_CUT.format(opts.max_event_bytes))
                break
            out.append(self.walk(item, depth + 1))
        if (
            len(out) == 2
            and isinstance(out[0], str)
            and out[1] != REDACTED
            and opts.redact_keys
            and opts.redacts(out[0])
        ):
            # A (name, value) pair, as in HTTP header lists: the name says secret.
            out[1] = REDACTED
        return out

    def _key(self, k: Any) -> str:
        if isinstance(k, str):
            return self._text(k)
        if isinstance(k, enum.Enum):
            k = k.value
        if k is None or isinstance(k, (bool, int, float)):
            return orjson.dumps(self.walk(k, 0)).decode().strip('"')
        if isinstance(k, (datetime, date, time)):
            return k.isoformat()
        return self._text(_describe(k, 200))

    def _str(self, s: str) -> str:
        s = self._text(s)
        opts = self._opts
        if opts.mask is not None:
            try:
                masked = opts.mask(s)
            except Exception:  # a failing mask hides the value; it never raises into the agent
                return REDACTED
            s = masked if isinstance(masked, str) else self._text(_describe(masked, 200))
        return mask_secrets(s)

    def _text(self, s: str) -> str:
        limit = min(self._opts.max_value_chars, max(self._budget, 0) + 64)
        self._budget -= min(len(s), limit)
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
