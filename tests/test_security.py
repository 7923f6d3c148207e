"""Permissions and the pickle switch."""

import numpy as np
import pytest

from sharedbox import PickleRefusedError, SharedDict


class Exploit:
    """Unpickling this runs a shell command (creates a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_allow_pickle_false_refuses_to_load(name, tmp_path):
    marker = tmp_path / "executed"
    writer = SharedDict(name, size=1 << 20)
    writer["evil"] = Exploit(marker)
    writer["plain"] = "text"
    writer["arr"] = np.arange(3)
    reader = SharedDict(name, create=False, allow_pickle=False)
    assert not reader.allow_pickle
    with pytest.raises(PickleRefusedError, match="allow_pickle=False"):
        reader["evil"]
    with pytest.raises(ValueError):  # its builtin base
        reader.get("evil")
    assert not marker.exists()
    assert reader["plain"] == "text"
    assert np.array_equal(reader["arr"], np.arange(3))
    # The default handle does unpickle: this is why the switch exists.
    writer["evil"]
    assert marker.exists()
    reader.close()
    writer.close()


def test_allow_pickle_false_refuses_to_store_and_keeps_old_value(name):
    d = SharedDict(name, size=1 << 20, allow_pickle=False)
    d["k"] = 1
    deep: list = [1]
    for _ in range(40):  # deeper than the native encoding goes (32)
        deep = [deep]
    for value in ({1}, [2**80], {"a": object()}, Exploit("/nonexistent/x"), 2**80,
                  np.array([None], dtype=object), True.__class__, deep):
        with pytest.raises(PickleRefusedError):
            d["k"] = value
    assert d["k"] == 1
    # JSON-like containers have a native encoding (codec tag 9): no pickle.
    for value in (None, True, -5, 1.5, "s", b"b", np.zeros((2, 2), dtype="f4"), [1],
                  {"a": 1, "b": [None, 2.5, ("t", b"x")]}, (1, "two")):
        d["n"] = value
        if not isinstance(value, np.ndarray):
            assert d["n"] == value and type(d["n"]) is type(value)
    d.close()


def test_allow_pickle_must_be_bool(name):
    with pytest.raises(TypeError):
        SharedDict(name, size=1 << 20, allow_pickle="no")


def test_reattaching_through_pickle_keeps_the_setting(name):
    import pickle

    d = SharedDict(name, size=1 << 20, allow_pickle=False)
    e = pickle.loads(pickle.dumps(d))
    assert e.name == name and e.allow_pickle is False
    e.close()
    d.close()
