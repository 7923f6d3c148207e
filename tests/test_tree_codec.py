"""The native encoding of JSON-like containers (codec tag 9,
src/binding/tree_codec.cpp): dicts, lists and tuples of None, bool, int64,
float, str and bytes come back equal and with their exact types, without
pickle; anything else falls back to pickle whole; malformed bytes are refused
cleanly."""

from __future__ import annotations

import math
import random
import struct

import pytest

from sharedbox import CorruptSegmentError, SharedDict, _core

TREE, PICKLE = b"\x09", b"\x07"

NATIVE = [
    {},
    [],
    (),
    {"id": 1, "round": 2, "name": "sensor-1", "ok": True},
    [i + 0.5 for i in range(100)],
    (1, "a", None, False, b"raw", -2**63, 2**63 - 1),
    {"nested": [1, {"deeper": (2.0, [None])}], "empty": {}},
    {1: "int key", 2.5: "float key", None: 0, True: 1, ("t", 1): "tuple key", b"k": "bytes key"},
    ["ünïcödé", "\U0001f600", ""],
    [float("inf"), -0.0],
]


@pytest.mark.parametrize("value", NATIVE, ids=range(len(NATIVE)))
def test_native_values_round_trip_with_exact_types(sd, value):
    raw = _core.encode_value(value)
    assert raw[:1] == TREE
    back = _core.decode_value(raw, False)  # no pickle involved: allowed without it

    def same(a, b):
        assert type(a) is type(b)
        if isinstance(a, dict):
            assert list(a) == list(b)  # order kept
            for k in a:
                same(a[k], b[k])
        elif isinstance(a, (list, tuple)):
            assert len(a) == len(b)
            for x, y in zip(a, b):
                same(x, y)
        elif isinstance(a, float) and math.isnan(a):
            assert math.isnan(b)
        else:
            assert a == b
            if isinstance(a, float):
                assert math.copysign(1, a) == math.copysign(1, b)

    same(value, back)
    sd["k"] = value
    same(value, sd["k"])


def test_nan_round_trips(sd):
    sd["k"] = [float("nan")]
    assert math.isnan(sd["k"][0])


class Point(tuple):
    pass


class Tag(str):
    pass


@pytest.mark.parametrize(
    "value",
    [[2**64], {"a": {1, 2}}, [Point((1,))], {"a": Tag("x")}, ("x", 1j), [True.__class__],
     ["\ud800"], {frozenset(): 1}, [bytearray(b"x")]],
    ids=["bigint", "set", "subclass", "subclass-value", "complex", "type", "surrogate",
         "frozenset-key", "bytearray"],
)
def test_anything_else_is_pickled_whole(sd, value):
    raw = _core.encode_value(value)
    assert raw[:1] == PICKLE
    sd["k"] = value
    got = sd["k"]
    assert got == value or (value == ["\ud800"] and got == ["\ud800"])


def test_self_containing_and_deep_containers_fall_back_to_pickle(sd):
    loop: list = []
    loop.append(loop)
    assert _core.encode_value(loop)[:1] == PICKLE
    sd["loop"] = loop
    got = sd["loop"]
    assert got[0] is got
    deep: list = []
    for _ in range(100):
        deep = [deep]
    assert _core.encode_value(deep)[:1] == PICKLE
    sd["deep"] = deep
    assert sd["deep"] == deep


def test_a_dict_keeps_its_order_and_compare_and_set_uses_it(sd):
    sd["k"] = {"a": 1, "b": 2}
    assert list(sd["k"]) == ["a", "b"]
    assert sd.compare_and_set("k", {"a": 1, "b": 2}, {"c": 3})
    assert sd["k"] == {"c": 3}
    assert not sd.compare_and_set("k", {"c": 3.0}, {"d": 4})  # exact types compared


def _body(items: bytes) -> bytes:
    return TREE + items


MALFORMED = [
    _body(b""),                                   # no item
    _body(b"x"),                                  # unknown item
    _body(b"i\x01\x02"),                          # short int
    _body(b"s" + struct.pack("<I", 10) + b"abc"),  # str longer than the bytes
    _body(b"s" + struct.pack("<I", 2) + b"\xff\xfe"),  # not UTF-8
    _body(b"l" + struct.pack("<I", 2**31) + b"N"),  # a count the bytes cannot hold
    _body(b"d" + struct.pack("<I", 1) + b"l" + struct.pack("<I", 0) + b"N"),  # list as key
    _body(b"NN"),                                 # trailing bytes
    _body(b"l" + struct.pack("<I", 1) * 40 + b"N"),  # nested beyond the limit
]


@pytest.mark.parametrize("raw", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_encodings_are_refused(raw):
    with pytest.raises(ValueError, match="malformed encoded value"):
        _core.validate_encoded(raw, True)
    with pytest.raises(CorruptSegmentError):  # as for every malformed value
        _core.decode_value(raw, True)


def test_random_bytes_never_crash_the_decoder():
    rng = random.Random(5)
    seeds = [_core.encode_value(v) for v in NATIVE]
    for _ in range(3000):
        raw = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            if len(raw) > 1:
                raw[rng.randrange(1, len(raw))] = rng.randrange(256)
        if rng.random() < 0.3:
            raw = raw[: rng.randrange(1, len(raw) + 1)]
        try:
            _core.decode_value(bytes(raw), False)
        except CorruptSegmentError:
            pass


def test_allow_pickle_false_stores_json_like_values(name):
    with SharedDict(name, size=1 << 20, allow_pickle=False) as d:
        d["cfg"] = {"lr": 0.1, "layers": [64, 32], "name": "m", "tags": ("a", "b")}
        assert d["cfg"]["layers"] == [64, 32]
