"""The dict operations of the spec and the MutableMapping behaviour on top."""

from collections.abc import Mapping, MutableMapping

import pytest

from sharedbox import SharedDict


def test_set_get_overwrite(sd):
    sd["k"] = 1
    assert sd["k"] == 1
    sd["k"] = "two"
    assert sd["k"] == "two"
    assert len(sd) == 1


def test_missing_key_is_key_error_carrying_the_key(sd):
    with pytest.raises(KeyError) as info:
        sd["nope"]
    assert info.value.args == ("nope",)


def test_get_with_default(sd):
    sd["present"] = None
    assert sd.get("present", 5) is None  # a stored None is not "missing"
    assert sd.get("absent") is None
    assert sd.get("absent", 7) == 7


def test_get_propagates_errors_other_than_missing(sd):
    with pytest.raises(TypeError):
        sd.get(3, "default")
    with pytest.raises(ValueError):
        sd.get("\udc80", "default")


def test_delete(sd):
    sd["a"] = 1
    del sd["a"]
    assert "a" not in sd
    with pytest.raises(KeyError):
        del sd["a"]
    assert len(sd) == 0


def test_contains_and_len(sd):
    for i in range(50):
        sd[f"k{i}"] = i
    assert len(sd) == 50
    assert "k7" in sd and "k50" not in sd
    for i in range(0, 50, 2):
        del sd[f"k{i}"]
    assert len(sd) == 25
    assert all((f"k{i}" in sd) == (i % 2 == 1) for i in range(50))


@pytest.mark.parametrize(
    "op",
    [
        lambda d: d[1],
        lambda d: d.__setitem__(1, "v"),
        lambda d: d.__delitem__(1),
        lambda d: 1 in d,
        lambda d: d[b"bytes"],
        lambda d: d.__setitem__(None, 1),
        lambda d: (1.5 in d),
        lambda d: d.pop(1),
        lambda d: d.setdefault(1, 2),
    ],
)
def test_non_str_keys_are_type_errors(sd, op):
    with pytest.raises(TypeError, match="keys must be str"):
        op(sd)
    assert len(sd) == 0


def test_any_str_is_a_key(sd):
    keys = ["", "nul\0inside", "\0", "x" * 10_000, "ünïcödé ✓ 🎉", " ", "\n"]
    for i, k in enumerate(keys):
        sd[k] = i
    for i, k in enumerate(keys):
        assert sd[k] == i
    assert sorted(sd) == sorted(keys)


def test_str_subclass_key_finds_the_same_entry(sd):
    class S(str):
        pass

    sd[S("abc")] = 1
    assert sd["abc"] == 1
    assert type(next(iter(sd))) is str


@pytest.mark.parametrize("key", ["\ud800", "a\udfffb", "\udc80"])
def test_lone_surrogate_keys_are_clear_errors(sd, key):
    for op in (
        lambda: sd.__setitem__(key, 1),
        lambda: sd[key],
        lambda: key in sd,
        lambda: sd.__delitem__(key),
    ):
        with pytest.raises(ValueError, match="surrogate") as info:
            op()
        assert isinstance(info.value.__cause__, UnicodeEncodeError)
    assert len(sd) == 0


def test_is_a_mutable_mapping(sd):
    assert isinstance(sd, MutableMapping)
    assert isinstance(sd, Mapping)
    assert issubclass(SharedDict, MutableMapping)


def test_update_forms(sd):
    sd.update({"a": 1})
    sd.update([("b", 2)])
    sd.update(c=3)
    sd.update({"a": 10}, d=4)
    assert dict(sd.items()) == {"a": 10, "b": 2, "c": 3, "d": 4}


def test_pop(sd):
    sd["a"] = [1]
    assert sd.pop("a") == [1]
    assert "a" not in sd
    assert sd.pop("a", "dflt") == "dflt"
    assert sd.pop("a", None) is None
    with pytest.raises(KeyError):
        sd.pop("a")


def test_popitem_until_empty(sd):
    sd.update({"a": 1, "b": 2})
    got = dict([sd.popitem(), sd.popitem()])
    assert got == {"a": 1, "b": 2}
    with pytest.raises(KeyError):
        sd.popitem()


def test_setdefault(sd):
    assert sd.setdefault("a", 5) == 5
    assert sd.setdefault("a", 6) == 5
    assert sd.setdefault("n") is None
    assert sd["n"] is None


def test_clear(sd):
    sd.update({f"k{i}": i for i in range(100)})
    sd.clear()
    assert len(sd) == 0 and list(sd) == []
    sd["again"] = 1
    assert dict(sd.items()) == {"again": 1}


def test_equality_against_any_mapping(sd, name):
    sd.update({"a": 1, "b": [2]})
    assert sd == {"a": 1, "b": [2]}
    assert sd != {"a": 1}
    assert not (sd == {"a": 1, "b": [3]})
    assert (sd == [("a", 1)]) is False
    other = SharedDict(name + "_2", {"a": 1, "b": [2]}, size=1 << 20)
    try:
        assert sd == other
    finally:
        other.close()
        other.unlink()


def test_repr_is_short(sd):
    sd.update({f"k{i}": "x" * 1000 for i in range(100)})
    r = repr(sd)
    assert sd.name in r and "100" in r and len(r) < 120


def test_unhashable(sd):
    with pytest.raises(TypeError):
        hash(sd)


def test_keys_values_items_views(sd):
    data = {f"k{i}": i * i for i in range(30)}
    sd.update(data)
    assert set(sd.keys()) == set(data)
    assert sorted(sd.values()) == sorted(data.values())
    assert dict(sd.items()) == data
    assert "k3" in sd.keys() and ("k3", 9) in sd.items() and ("k3", 8) not in sd.items()
    assert len(sd.keys()) == len(sd.values()) == len(sd.items()) == 30
    assert set(sd.keys_atomic()) == set(data)
    assert isinstance(sd.keys_atomic(), list)


def test_iteration_skips_keys_deleted_meanwhile(sd):
    sd.update({f"k{i}": i for i in range(20)})
    seen = []
    for key, value in sd.items():
        seen.append(key)
        if key != "k5":
            sd.pop("k5", None)  # deleted while the iteration is under way
    assert seen.count("k5") <= 1
    assert "k5" not in sd
    values = list(sd.values())
    assert len(values) == 19


def test_iterating_while_modifying_does_not_raise(sd):
    sd.update({f"k{i}": i for i in range(50)})
    for key in sd:
        del sd[key]
        sd[key + "_new"] = 1
    assert len(sd) == 50
