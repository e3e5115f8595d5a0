"""procfleet.shared.values: Python values through a JSON task line and back, as they went."""

import datetime
import enum
import json
import math
from collections import OrderedDict, namedtuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from procfleet.shared import values
from procfleet.shared.values import Unsendable, pack, unpack

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def through_a_line(value):
    """pack, then what a task line does to it (JSON text and back), then unpack."""
    return unpack(json.loads(_dumps(pack(value))))


def same(a, b) -> bool:
    """Equal, with the same types all the way down (and nan equal to nan)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        if len(a) != len(b):
            return False
        for key, item in a.items():
            match = [k for k in b if same(k, key)]
            if len(match) != 1 or not same(item, b[match[0]]):
                return False
        return True
    if isinstance(a, (set, frozenset)):
        return len(a) == len(b) and all(any(same(x, y) for y in b) for x in a)
    return a == b


hashable = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.binary()
    | st.floats(allow_nan=False),
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3),
    max_leaves=8)
anything = st.recursive(
    hashable | st.floats() | st.binary().map(bytearray),
    lambda inner: (st.lists(inner, max_size=4) | st.tuples(inner, inner)
                   | st.sets(hashable, max_size=4)
                   | st.dictionaries(st.text(), inner, max_size=4)
                   | st.dictionaries(hashable, inner, max_size=4)),
    max_leaves=20)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False,
                                                                         allow_infinity=False),
    lambda inner: (st.lists(inner, max_size=4)
                   | st.dictionaries(st.text().filter(lambda k: not k.startswith("$")), inner,
                                     max_size=4)),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(anything)
def test_any_value_of_the_supported_types_comes_back_as_it_went(value):
    assert same(through_a_line(value), value)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_a_json_value_travels_as_it_is(value):
    assert pack(value) == value
    assert same(unpack(value), value)


@pytest.mark.parametrize("value, shown", [
    ((1, 2), {"$tuple": [1, 2]}),
    (b"\x00\xff", {"$bytes": "AP8="}),
    (bytearray(b"ab"), {"$bytearray": "YWI="}),
    ({1}, {"$set": [1]}),
    (frozenset(), {"$frozenset": []}),
    (float("-inf"), {"$float": "-inf"}),
    ({1: "a"}, {"$dict": [[1, "a"]]}),
    ({"$tuple": [1]}, {"$dict": [["$tuple", [1]]]}),    # a user's own "$" key is not a tag
    ({"a": (1,), "b": [b""]}, {"a": {"$tuple": [1]}, "b": [{"$bytes": ""}]}),
])
def test_what_json_would_change_or_refuse_is_tagged(value, shown):
    assert pack(value) == shown
    assert same(through_a_line(value), value)


class Colour(enum.IntEnum):
    RED = 1


class Shade(str, enum.Enum):
    DARK = "dark"


def test_a_subclass_travels_as_its_base_type():
    Point = namedtuple("Point", "x y")
    assert same(through_a_line(Colour.RED), 1)
    assert same(through_a_line([Shade.DARK]), ["dark"])       # its value, as json writes it
    assert same(through_a_line(Point(1, 2)), (1, 2))
    assert same(through_a_line(OrderedDict(a=1)), {"a": 1})
    assert same(through_a_line(True), True)


@pytest.mark.parametrize("value, where, kind", [
    (object(), "value", "object"),
    ([1, {"when": datetime.date(2026, 1, 1)}], "value[1]['when']", "datetime.date"),
    ((1, 2j), "value[1]", "complex"),
    ({(1, 2): [None, {3: len}]}, "value[(1, 2)][1][3]", "builtin_function_or_method"),
])
def test_anything_else_is_unsendable_naming_its_type_and_where_it_is(value, where, kind):
    with pytest.raises(Unsendable) as refused:
        pack(value)
    assert isinstance(refused.value, TypeError)
    assert refused.value.kind == kind
    assert refused.value.describe().startswith(f"{where} is a {kind}, which cannot travel")


@pytest.mark.parametrize("bad", [
    {"$pickle": "gASV"},                  # an unknown tag
    {"$tuple": "abc"},                    # the right tag, the wrong shape
    {"$bytes": "not base64!"},
    {"$float": "1e999"},
    {"$set": [[1, 2]]},                   # a list cannot be in a set
    {"$dict": [[1]]},
    {"$dict": [[[1], 2]]},                # nor be a key
])
def test_a_tag_that_is_unknown_or_malformed_is_a_value_error(bad):
    with pytest.raises(ValueError):
        unpack([bad])


def test_a_value_nested_too_deeply_is_a_recursion_error_not_a_crash():
    value: list = []
    for _ in range(100_000):
        value = [value]
    with pytest.raises(RecursionError):
        pack(value)


def test_the_tags_are_the_ones_the_module_documents():
    doc = values.__doc__
    for tag in ("$tuple", "$set", "$frozenset", "$bytes", "$bytearray", "$float", "$dict"):
        assert f'"{tag}"' in doc
