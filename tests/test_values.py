"""Values round-trip with their exact type; bad values are clear errors.

The round-trip tests run on every backend (the md fixture, see conftest.py);
those that read a segment's raw bytes are SharedDict's own.
"""

import enum
import fractions
import pickle
import subprocess
import sys
import textwrap
from collections import OrderedDict, defaultdict, namedtuple
from decimal import Decimal

import pytest

from sharedbox import SharedDict


class Colour(enum.IntEnum):
    RED = 1


class Flag(enum.Enum):
    ON = "on"


class MyStr(str):
    pass


class MyInt(int):
    pass


Point = namedtuple("Point", "x y")

VALUES = [
    None,
    True,
    False,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**63,
    -(2**63) - 1,
    10**100,
    -(10**100),
    0.0,
    -0.0,
    1.5,
    float("inf"),
    float("-inf"),
    1e-300,
    complex(1, -2),
    "",
    "text",
    "ünïcödé 🎉",
    "nul\0char",
    "lone \ud800 surrogate in a value",
    b"",
    b"\x00\xff" * 100,
    bytearray(b"mutable"),
    (),
    (1, "a", None),
    [],
    [1, [2, [3]]],
    {},
    {"a": {"b": [1, 2]}, 1: "int key in a value"},
    set(),
    {1, 2, 3},
    frozenset({"x"}),
    Colour.RED,
    Flag.ON,
    MyStr("sub"),
    MyInt(5),
    Point(1, 2),
    OrderedDict(a=1),
    Decimal("1.10"),
    fractions.Fraction(1, 3),
    range(5),
    "x" * 1_000_000,
    b"y" * 3_000_000,
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__ + ":" + repr(v)[:20])
def test_roundtrip_exact_type_and_value(md, value):
    md["v"] = value
    got = md["v"]
    assert type(got) is type(value)
    if isinstance(value, float) and value != value:
        assert got != got
    else:
        assert got == value
    if isinstance(value, float):
        assert repr(got) == repr(value)  # -0.0 stays -0.0


def test_str_of_every_length_and_non_ascii_position_roundtrips(sd):
    # str values, str items of lists and keys take an ASCII fast path that
    # checks 8 bytes at a time, then the tail; a non-ASCII character at any
    # position of any length must send the whole str through UTF-8.
    texts = []
    for n in range(0, 41):
        texts.append("".join(chr(0x41 + (i % 26)) for i in range(n)))
        for pos in range(n):
            for ch in ("\u00e9", "\u20ac", "\U0001f389", "\x7f"):
                texts.append("a" * pos + ch + "b" * (n - pos - 1))
    for text in texts:
        sd["v"] = text
        sd["t"] = [text, (text,)]
        sd[text or "empty"] = 1
        got, tree = sd["v"], sd["t"]
        assert type(got) is str and got == text
        assert tree == [text, (text,)] and type(tree[0]) is str
        assert (text or "empty") in sd.keys()
        del sd[text or "empty"]


def test_nan_roundtrip(md):
    md["nan"] = float("nan")
    assert md["nan"] != md["nan"]


def test_bool_is_not_int(md):
    md["t"] = True
    md["one"] = 1
    assert md["t"] is True and type(md["one"]) is int


def test_values_are_copies(md):
    value = [1, 2]
    md["l"] = value
    value.append(3)
    got = md["l"]
    assert got == [1, 2]
    got.append(9)
    assert md["l"] == [1, 2]


def test_defaultdict_roundtrip(md):
    dd = defaultdict(list, {"a": [1]})
    md["dd"] = dd
    got = md["dd"]
    assert type(got) is defaultdict and got == dd and got.default_factory is list


def test_unpicklable_value_is_value_error_and_nothing_stored(md):
    import threading

    md["k"] = "before"
    with pytest.raises(ValueError, match="cannot be pickled") as info:
        md["k"] = threading.Lock()
    assert info.value.__cause__ is not None
    assert md["k"] == "before"
    with pytest.raises(ValueError):
        md["new"] = lambda: 1
    assert "new" not in md and len(md) == 1


def test_value_unreadable_in_another_process_is_value_error(name):
    # A child defines a class, stores an instance and exits; this process has
    # no such class, so reading the value must raise ValueError.
    code = textwrap.dedent(
        f"""
        from sharedbox import SharedDict
        class OnlyInChild:
            pass
        import __main__
        d = SharedDict({name!r}, size=1 << 20)
        d["obj"] = OnlyInChild()
        d["fine"] = 1
        d.close()
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    d = SharedDict(name, create=False)
    with pytest.raises(ValueError, match="unpickling failed") as info:
        d["obj"]
    assert info.value.__cause__ is not None
    with pytest.raises(ValueError):
        d.get("obj", "default")
    assert d["fine"] == 1
    d.close()


def test_pickle_errors_in_reduce_are_value_errors(md):
    class Bad:
        def __reduce__(self):
            raise RuntimeError("no")

    with pytest.raises(ValueError) as info:
        md["bad"] = Bad()
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "bad" not in md


def test_stored_pickle_is_protocol_5(sd):
    # An int beyond 64 bits: pickled (plain tuples have a native encoding).
    value = (1, 2**70, "a marker string for the raw search")
    sd["t"] = value
    with open(f"/dev/shm/{sd.name}", "rb") as f:
        raw = f.read()
    assert pickle.dumps(value, protocol=5) in raw
    assert pickle.dumps(value, protocol=4) not in raw


def test_native_types_are_not_pickled(sd):
    sd["s"] = "plain text marker 12345"
    sd["b"] = b"raw bytes marker 67890"
    with open(f"/dev/shm/{sd.name}", "rb") as f:
        raw = f.read()
    assert b"plain text marker 12345" in raw and b"raw bytes marker 67890" in raw
    assert pickle.dumps("plain text marker 12345", protocol=5) not in raw


# ---------------------------------------------------------------------------
# Bytes-like values: a memoryview (which pickle refuses) and any buffer that
# pickle cannot carry are stored as their bytes and read back as bytes.
# Buffers that pickle does carry keep their type (bytearray, array.array).


def test_memoryview_is_stored_as_bytes(sd):
    source = bytearray(b"hello world")
    sd["mv"] = memoryview(source)
    source[:5] = b"HELLO"  # a copy was stored, not the view
    got = sd["mv"]
    assert type(got) is bytes and got == b"hello world"
    assert sd._value_info("mv")[0] == "bytes"


def test_memoryview_shapes_and_formats(sd):
    import array

    import numpy as np

    sd["strided"] = memoryview(b"abcdef")[::2]  # not contiguous: copied in C order
    assert sd["strided"] == b"ace"
    ints = array.array("i", [1, 2, 3])
    sd["ints"] = memoryview(ints)
    assert sd["ints"] == ints.tobytes()
    grid = np.arange(6, dtype=np.uint8).reshape(2, 3)
    sd["fortran"] = memoryview(np.asfortranarray(grid))
    assert sd["fortran"] == grid.tobytes()  # C order
    sd["big"] = memoryview(b"z" * (3 << 20))  # copied without the GIL
    assert sd["big"] == b"z" * (3 << 20)


def test_unpicklable_buffer_is_stored_as_bytes(sd):
    import mmap

    mm = mmap.mmap(-1, 4096)
    mm[:4] = b"mmap"
    sd["mm"] = mm
    got = sd["mm"]
    assert type(got) is bytes and got[:4] == b"mmap" and len(got) == 4096
    mm.close()


def test_picklable_buffers_keep_their_type(sd):
    import array

    sd["ba"] = bytearray(b"mutable")
    sd["arr"] = array.array("d", [1.5])
    assert type(sd["ba"]) is bytearray and sd["ba"] == bytearray(b"mutable")
    assert type(sd["arr"]) is array.array and sd["arr"] == array.array("d", [1.5])


def test_released_memoryview_is_a_value_error(sd):
    view = memoryview(b"gone")
    view.release()
    with pytest.raises(ValueError):
        sd["k"] = view
    assert "k" not in sd


def test_memoryview_without_pickle(name):
    with SharedDict(name, size=1 << 20, allow_pickle=False) as d:
        d["mv"] = memoryview(b"native")
        assert d["mv"] == b"native"
