"""Python values as JSON, so that FleetExecutor's arguments and results come back as they went.

A task line is JSON, and JSON changes some values on the way (a tuple arrives as a list, an int
dict key as text) and cannot carry others (bytes, a set, `nan`). `pack` writes those as tagged
JSON, and `unpack` makes them again:

    tuple      {"$tuple": [items]}          set        {"$set": [items]}
    bytes      {"$bytes": "base64"}         frozenset  {"$frozenset": [items]}
    bytearray  {"$bytearray": "base64"}     nan, inf   {"$float": "nan" | "inf" | "-inf"}
    a dict whose keys are not all text, or has a key starting with "$":
               {"$dict": [[key, value], ...]}

Every other value is a JSON value and travels as it is, so a task that takes and returns plain
JSON costs nothing more. A subclass travels as its base type (an IntEnum as an int, a namedtuple
as a tuple), as the json module writes them. Anything else (an object, a datetime, a complex) is
`Unsendable`, a TypeError naming the value's type and where it is. Nothing here runs code
named by the data: a tag only picks one of the builders above.
"""

import base64
import binascii
import math

TUPLE, LIST_TAGS = "$tuple", ("$set", "$frozenset")
BYTES, BYTEARRAY, FLOAT, DICT = "$bytes", "$bytearray", "$float", "$dict"
_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class Unsendable(TypeError):
    """A value that cannot travel: `kind` is its type's name, `where` a path such as
    `[2]['when']` inside the value given to `pack`."""

    def __init__(self, kind: str, where: str = "") -> None:
        self.kind, self.where = kind, where
        super().__init__(self.describe())

    def describe(self, root: str = "value") -> str:
        return (f"{root}{self.where} is a {self.kind}, which cannot travel: values are JSON "
                "values (numbers, text, True/False/None, lists, dicts) plus tuples, sets, "
                "frozensets, bytes, bytearrays, nan/inf and dicts with such keys")

    def inside(self, step: str) -> "Unsendable":
        return Unsendable(self.kind, step + self.where)


def pack(value):
    """`value` as JSON (lists, dicts with text keys, str, int, float, bool, None), with the
    values JSON would change or refuse tagged; Unsendable for a value of any other type;
    RecursionError for one nested too deeply."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        return value if math.isfinite(value) else {FLOAT: repr(value)}
    if kind is list:
        return _pack_items(value)
    if kind is dict:
        return _pack_dict(value)
    if kind is tuple:
        return {TUPLE: _pack_items(value)}
    return _pack_other(value)


def _pack_other(value):
    if isinstance(value, (bytes, bytearray)):
        text = base64.b64encode(value).decode("ascii")
        return {BYTEARRAY if isinstance(value, bytearray) else BYTES: text}
    if isinstance(value, (set, frozenset)):
        items = _pack_items(value)
        return {"$frozenset" if isinstance(value, frozenset) else "$set": items}
    # subclasses travel as their base type, as the json module writes them (by the base type's
    # own conversion: a str-mixin Enum's __str__ is its name, not its value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return pack(float.__float__(value))
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, tuple):
        return {TUPLE: _pack_items(value)}
    if isinstance(value, list):
        return _pack_items(value)
    if isinstance(value, dict):
        return _pack_dict(value)
    raise Unsendable(f"{type(value).__module__}.{type(value).__qualname__}"
                     if type(value).__module__ != "builtins" else type(value).__name__)


def _pack_items(items) -> list:
    packed = []
    for index, item in enumerate(items):
        try:
            packed.append(pack(item))
        except Unsendable as exc:
            raise exc.inside(f"[{index}]") from None
    return packed


def _pack_dict(value: dict):
    plain = True
    for key in value:
        if type(key) is not str or key[:1] == "$":
            plain = False
            break
    if plain:
        packed = {}
        for key, item in value.items():
            try:
                packed[key] = pack(item)
            except Unsendable as exc:
                raise exc.inside(f"[{key!r}]") from None
        return packed
    pairs = []
    for key, item in value.items():
        try:
            pairs.append([pack(key), pack(item)])
        except Unsendable as exc:
            raise exc.inside(f"[{_shown(key)}]") from None
    return {DICT: pairs}


def _shown(key) -> str:
    try:
        text = repr(key)
    except Exception:
        return "<a key>"
    return text if len(text) <= 40 else text[:37] + "..."


def unpack(value):
    """The value `pack` was given, from what it returned (after a JSON round trip); ValueError
    for a tag it does not know or a tag of the wrong shape."""
    kind = type(value)
    if kind is list:
        return [unpack(item) for item in value]
    if kind is dict:
        if len(value) == 1:
            (key, payload), = value.items()
            if key[:1] == "$":
                return _untag(key, payload)
        return {key: unpack(item) for key, item in value.items()}
    return value


def _untag(tag: str, payload):
    if tag == TUPLE and type(payload) is list:
        return tuple(unpack(item) for item in payload)
    if tag in LIST_TAGS and type(payload) is list:
        items = [unpack(item) for item in payload]
        try:
            return set(items) if tag == "$set" else frozenset(items)
        except TypeError:
            raise ValueError(f"a {tag[1:]} of values that cannot be in one") from None
    if tag in (BYTES, BYTEARRAY) and type(payload) is str:
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{tag} holds text that is not base64") from None
        return data if tag == BYTES else bytearray(data)
    if tag == FLOAT and payload in _FLOATS:
        return _FLOATS[payload]
    if tag == DICT and type(payload) is list:
        result = {}
        for pair in payload:
            if type(pair) is not list or len(pair) != 2:
                raise ValueError("$dict holds something other than [key, value] pairs")
            try:
                result[unpack(pair[0])] = unpack(pair[1])
            except TypeError:
                raise ValueError("$dict holds a key that cannot be a dict key") from None
        return result
    raise ValueError(f"a value tagged {tag!r} that this procfleet does not know "
                     f"(or of the wrong shape): {type(payload).__name__}")
