"""Restricted, data-only serialisation between the judge and the candidate processes of a sandbox run.

Only plain values cross: None, bool, int (any size), float (nan, inf, -0.0 exact), complex, str
(lone surrogates too), bytes, list, tuple, dict, set, frozenset, and the standard library's
containers of them collections.Counter, OrderedDict, deque (with its maxlen) and defaultdict (whose
default factory must be None or a builtin type such as list or int, sent by name), nested up to
MAX_DEPTH. (MBPP's references return Counters; the receiving side rebuilds the standard type
itself, so their comparisons are the standard library's.) The type
test is exact (`type(x) is int`, never isinstance), so a subclass of a builtin, which could carry
an `__eq__` of its own, is refused like any other object. Decoding builds nothing but these values:
no pickle, no constructor lookup, no code; a malformed or oversized message is a `WireError`.

Format: one tag byte per value, then
    N T F               None, True, False
    i <u32 n> <n bytes> int, little-endian two's complement
    f <8 bytes>         float, IEEE 754 double (struct "<d")
    c <16 bytes>        complex, two doubles
    s / b <u32 n> ...   str (UTF-8, surrogatepass) / bytes
    l t S z <u32 n> ... list / tuple / set / frozenset of n values
    d <u32 n> ...       dict of n key, value pairs (keys in order)
    C O <u32 n> ...     Counter / OrderedDict, as dict
    D <factory> <u32 n> ...  defaultdict: the factory's name as a value (None, "int", "list", ...), then as dict
    Q <maxlen> <u32 n> ...   deque: maxlen as a value (None or int), then as list

This file imports only the standard library: the sandbox loads it by path, outside the package.
"""

from __future__ import annotations

import collections
import struct
import sys

MAX_DEPTH = 100  # nesting of containers; deeper (or a cycle) is refused
MAX_BYTES = 64 * 1024 * 1024  # one message

_U32 = struct.Struct("<I")
_F64 = struct.Struct("<d")
_C128 = struct.Struct("<dd")
_CONTAINERS = {list: b"l", tuple: b"t", set: b"S", frozenset: b"z"}
_BUILD = {b"l": list, b"t": tuple, b"S": set, b"z": frozenset}
_MAPPINGS = {dict: b"d", collections.Counter: b"C", collections.OrderedDict: b"O", collections.defaultdict: b"D"}
_FACTORIES = {t.__name__: t for t in (int, float, complex, str, bytes, bool, list, tuple, dict, set, frozenset)}


class WireError(ValueError):
    """A value that is not plain data, or a message that does not decode to plain data."""


def encode(value) -> bytes:
    """Plain value -> bytes; anything else (an object of any other type, a subclass) -> WireError."""
    out: list[bytes] = []
    _encode(value, out, 0)
    data = b"".join(out)
    if len(data) > MAX_BYTES:
        raise WireError(f"value too large to pass between processes ({len(data)} bytes > {MAX_BYTES})")
    return data


def _encode(v, out: list[bytes], depth: int) -> None:
    t = type(v)
    if v is None:
        out.append(b"N")
    elif t is bool:
        out.append(b"T" if v else b"F")
    elif t is int:
        raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
        out += (b"i", _U32.pack(len(raw)), raw)
    elif t is float:
        out += (b"f", _F64.pack(v))
    elif t is complex:
        out += (b"c", _C128.pack(v.real, v.imag))
    elif t is str:
        raw = v.encode("utf-8", "surrogatepass")
        out += (b"s", _U32.pack(len(raw)), raw)
    elif t is bytes:
        out += (b"b", _U32.pack(len(v)), v)
    elif t in _CONTAINERS or t in _MAPPINGS or t is collections.deque:
        if depth >= MAX_DEPTH:
            raise WireError(f"value nested deeper than {MAX_DEPTH} levels (or containing itself)")
        if t is collections.defaultdict:
            factory = v.default_factory
            if factory is not None and _FACTORIES.get(getattr(factory, "__name__", None)) is not factory:
                raise WireError("a defaultdict whose default factory is not a builtin type is not plain data")
            out.append(b"D")
            _encode(None if factory is None else factory.__name__, out, depth + 1)
        elif t is collections.deque:
            out.append(b"Q")
            _encode(v.maxlen, out, depth + 1)
        else:
            out.append(_CONTAINERS.get(t) or _MAPPINGS[t])
        out.append(_U32.pack(len(v)))
        if t in _MAPPINGS:
            for k, item in v.items():
                _encode(k, out, depth + 1)
                _encode(item, out, depth + 1)
        else:
            for item in v:
                _encode(item, out, depth + 1)
    else:
        raise WireError(f"a {_type_name(v)} object is not plain data (allowed: None, bool, int, float, complex, "
                        f"str, bytes, list, tuple, dict, set, frozenset, Counter, OrderedDict, defaultdict, deque)")


def _type_name(v) -> str:
    t = type(v)
    mod = getattr(t, "__module__", "?")
    return t.__qualname__ if mod == "builtins" else f"{mod}.{t.__qualname__}"


def decode(data: bytes):
    """bytes -> plain value; trailing bytes, unknown tags, truncation, unhashable keys -> WireError."""
    if len(data) > MAX_BYTES:
        raise WireError(f"message too large ({len(data)} bytes)")
    mv = memoryview(data)
    try:
        value, pos = _decode(mv, 0, 0)
    except (IndexError, struct.error, UnicodeDecodeError, TypeError, OverflowError) as e:
        raise WireError(f"malformed message: {type(e).__name__}: {e}") from None
    if pos != len(mv):
        raise WireError("malformed message: trailing bytes")
    return value


def _decode(mv: memoryview, pos: int, depth: int):
    tag = bytes(mv[pos:pos + 1])
    pos += 1
    if tag == b"N":
        return None, pos
    if tag == b"T":
        return True, pos
    if tag == b"F":
        return False, pos
    if tag == b"f":
        return _F64.unpack_from(mv, pos)[0], pos + 8
    if tag == b"c":
        re_, im = _C128.unpack_from(mv, pos)
        return complex(re_, im), pos + 16
    extra = None
    if tag in (b"D", b"Q"):  # the factory name / maxlen first
        if depth >= MAX_DEPTH:
            raise WireError(f"message nested deeper than {MAX_DEPTH} levels")
        extra, pos = _decode(mv, pos, depth + 1)
        if tag == b"D" and extra is not None and not (type(extra) is str and extra in _FACTORIES):
            raise WireError("malformed message: bad defaultdict factory")
        if tag == b"Q" and extra is not None and not (type(extra) is int and 0 <= extra <= sys.maxsize):
            raise WireError("malformed message: bad deque maxlen")
    if tag in (b"i", b"s", b"b", b"l", b"t", b"S", b"z", b"d", b"C", b"O", b"D", b"Q"):
        (n,) = _U32.unpack_from(mv, pos)
        pos += 4
        if tag in (b"i", b"s", b"b"):
            raw = bytes(mv[pos:pos + n])
            if len(raw) != n:
                raise WireError("malformed message: truncated")
            pos += n
            if tag == b"i":
                return int.from_bytes(raw, "little", signed=True), pos
            return (raw.decode("utf-8", "surrogatepass") if tag == b"s" else raw), pos
        if depth >= MAX_DEPTH:
            raise WireError(f"message nested deeper than {MAX_DEPTH} levels")
        if n > len(mv) - pos:  # every value takes at least one byte: a cheap bound on bogus counts
            raise WireError("malformed message: truncated")
        if tag in (b"d", b"C", b"O", b"D"):
            d = {b"d": dict, b"C": collections.Counter, b"O": collections.OrderedDict}.get(tag, dict)()
            if tag == b"D":
                d = collections.defaultdict(None if extra is None else _FACTORIES[extra])
            for _ in range(n):
                k, pos = _decode(mv, pos, depth + 1)
                v, pos = _decode(mv, pos, depth + 1)
                d[k] = v  # an unhashable key raises TypeError
            return d, pos
        items = []
        for _ in range(n):
            item, pos = _decode(mv, pos, depth + 1)
            items.append(item)
        if tag == b"Q":
            return collections.deque(items, extra), pos
        return _BUILD[tag](items), pos
    raise WireError(f"malformed message: unknown tag {tag!r}")
