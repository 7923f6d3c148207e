"""The dict operations of the spec and the MutableMapping behaviour on top.

Every test runs on each backend (the mapping_backend fixture in conftest.py:
SharedDict, RedisDict on one server, RedisDict sharded over a cluster), so
that the backends cannot drift apart.
"""

from collections.abc import Mapping, MutableMapping

import pytest

from sharedbox import SharedDict


def test_set_get_overwrite(md):
    md["k"] = 1
    assert md["k"] == 1
    md["k"] = "two"
    assert md["k"] == "two"
    assert len(md) == 1


def test_missing_key_is_key_error_carrying_the_key(md):
    with pytest.raises(KeyError) as info:
        md["nope"]
    assert info.value.args == ("nope",)


def test_get_with_default(md):
    md["present"] = None
    assert md.get("present", 5) is None  # a stored None is not "missing"
    assert md.get("absent") is None
    assert md.get("absent", 7) == 7


def test_get_propagates_errors_other_than_missing(md):
    with pytest.raises(TypeError):
        md.get(3, "default")
    with pytest.raises(ValueError):
        md.get("\udc80", "default")


def test_delete(md):
    md["a"] = 1
    del md["a"]
    assert "a" not in md
    with pytest.raises(KeyError):
        del md["a"]
    assert len(md) == 0


def test_contains_and_len(md):
    for i in range(50):
        md[f"k{i}"] = i
    assert len(md) == 50
    assert "k7" in md and "k50" not in md
    for i in range(0, 50, 2):
        del md[f"k{i}"]
    assert len(md) == 25
    assert all((f"k{i}" in md) == (i % 2 == 1) for i in range(50))


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
def test_non_str_keys_are_type_errors(md, op):
    with pytest.raises(TypeError, match="keys must be str"):
        op(md)
    assert len(md) == 0


def test_any_str_is_a_key(md):
    keys = ["", "nul\0inside", "\0", "x" * 10_000, "ünïcödé ✓ 🎉", " ", "\n"]
    for i, k in enumerate(keys):
        md[k] = i
    for i, k in enumerate(keys):
        assert md[k] == i
    assert sorted(md) == sorted(keys)


def test_str_subclass_key_finds_the_same_entry(md):
    class S(str):
        pass

    md[S("abc")] = 1
    assert md["abc"] == 1
    assert type(next(iter(md))) is str


@pytest.mark.parametrize("key", ["\ud800", "a\udfffb", "\udc80"])
def test_lone_surrogate_keys_are_clear_errors(md, key):
    for op in (
        lambda: md.__setitem__(key, 1),
        lambda: md[key],
        lambda: key in md,
        lambda: md.__delitem__(key),
    ):
        with pytest.raises(ValueError, match="surrogate") as info:
            op()
        assert isinstance(info.value.__cause__, UnicodeEncodeError)
    assert len(md) == 0


def test_is_a_mutable_mapping(md):
    assert isinstance(md, MutableMapping)
    assert isinstance(md, Mapping)
    assert issubclass(type(md), MutableMapping)
    assert issubclass(SharedDict, MutableMapping)


def test_update_forms(md):
    md.update({"a": 1})
    md.update([("b", 2)])
    md.update(c=3)
    md.update({"a": 10}, d=4)
    assert dict(md.items()) == {"a": 10, "b": 2, "c": 3, "d": 4}


def test_pop(md):
    md["a"] = [1]
    assert md.pop("a") == [1]
    assert "a" not in md
    assert md.pop("a", "dflt") == "dflt"
    assert md.pop("a", None) is None
    with pytest.raises(KeyError):
        md.pop("a")


def test_popitem_until_empty(md):
    md.update({"a": 1, "b": 2})
    got = dict([md.popitem(), md.popitem()])
    assert got == {"a": 1, "b": 2}
    with pytest.raises(KeyError):
        md.popitem()


def test_setdefault(md):
    assert md.setdefault("a", 5) == 5
    assert md.setdefault("a", 6) == 5
    assert md.setdefault("n") is None
    assert md["n"] is None


def test_clear(md):
    md.update({f"k{i}": i for i in range(100)})
    md.clear()
    assert len(md) == 0 and list(md) == []
    md["again"] = 1
    assert dict(md.items()) == {"again": 1}


def test_equality_against_any_mapping(md, mapping_backend):
    md.update({"a": 1, "b": [2]})
    assert md == {"a": 1, "b": [2]}
    assert md != {"a": 1}
    assert not (md == {"a": 1, "b": [3]})
    assert (md == [("a", 1)]) is False
    other = mapping_backend({"a": 1, "b": [2]})
    assert md == other


def test_repr_is_short(md):
    md.update({f"k{i}": "x" * 1000 for i in range(100)})
    r = repr(md)
    assert md.name in r and "100" in r and len(r) < 120


def test_unhashable(md):
    with pytest.raises(TypeError):
        hash(md)


def test_keys_values_items_views(md):
    data = {f"k{i}": i * i for i in range(30)}
    md.update(data)
    assert set(md.keys()) == set(data)
    assert sorted(md.values()) == sorted(data.values())
    assert dict(md.items()) == data
    assert "k3" in md.keys() and ("k3", 9) in md.items() and ("k3", 8) not in md.items()
    assert len(md.keys()) == len(md.values()) == len(md.items()) == 30
    assert set(md.keys_atomic()) == set(data)
    assert isinstance(md.keys_atomic(), list)


def test_iteration_skips_keys_deleted_meanwhile(md):
    md.update({f"k{i}": i for i in range(20)})
    seen = []
    for key, value in md.items():
        seen.append(key)
        if key != "k5":
            md.pop("k5", None)  # deleted while the iteration is under way
    assert seen.count("k5") <= 1
    assert "k5" not in md
    values = list(md.values())
    assert len(values) == 19


def test_iterating_while_modifying_does_not_raise(md):
    md.update({f"k{i}": i for i in range(50)})
    for key in md:
        del md[key]
        md[key + "_new"] = 1
    assert len(md) == 50


def test_key_list_is_rebuilt_after_inserts_and_deletes_elsewhere(name):
    """keys() keeps the last key list while no key was inserted or deleted (the
    stripes' change sequences tell): every change, from any process, shows."""
    import subprocess
    import sys

    d = SharedDict(name, {f"k{i}": i for i in range(50)}, size=1 << 20, max_keys=200)
    first = d.keys_atomic()
    first.append("mutated by the caller")  # a copy: the next call is unaffected
    assert sorted(d.keys_atomic()) == sorted(f"k{i}" for i in range(50))
    d["k3"] = "overwritten"  # not a key-set change
    assert len(list(d)) == 50
    script = (f"from sharedbox import SharedDict\n"
              f"d = SharedDict({name!r}, create=False)\n"
              f"d['new'] = 1\ndel d['k7']\nd.close()\n")
    subprocess.run([sys.executable, "-c", script], check=True)
    keys = set(d)
    assert "new" in keys and "k7" not in keys and len(keys) == 50
    assert set(d.keys_atomic()) == keys
    del d["new"]
    assert "new" not in d.keys_atomic() and "new" not in list(d.keys())
    d.close()


def test_len_follows_inserts_and_deletes_from_another_process(name):
    """len() answers from its last count while no insert or delete has begun
    since (the segment's key-set epoch); every change, from any process, shows."""
    import subprocess
    import sys

    d = SharedDict(name, {f"k{i}": i for i in range(10)}, size=1 << 20, max_keys=100)
    assert len(d) == 10 and len(d) == 10  # the second answer comes from the kept count
    d["k1"] = "overwritten"  # not an insert
    assert len(d) == 10
    for change, expected in (("d['new'] = 1", 11), ("del d['k2']; del d['k3']", 9)):
        script = (f"from sharedbox import SharedDict\n"
                  f"d = SharedDict({name!r}, create=False)\n{change}\nd.close()\n")
        subprocess.run([sys.executable, "-c", script], check=True)
        assert len(d) == expected
    d.close()


def test_items_and_values_walk_stripes_whole(name):
    """items()/values() copy a stripe's small values under its lock and decode
    them after; larger values are read one by one.  Every pair is whole and
    agrees with d[k]; a key deleted meanwhile is skipped, never half there."""
    big = b"x" * 10_000  # above the batch limit: read by get()
    d = SharedDict(name, size=8 << 20, max_keys=500, stripes=4)
    for i in range(300):
        d[f"k{i}"] = big if i % 50 == 0 else (i, str(i))
    items = dict(d.items())
    assert items == {k: d[k] for k in d} and len(items) == 300
    assert sorted(map(repr, d.values())) == sorted(map(repr, items.values()))
    it = iter(d.items())
    first = next(it)
    for i in range(0, 300, 2):
        d.pop(f"k{i}", None)
    rest = list(it)
    for k, v in [first] + rest:
        assert v == (big if int(k[1:]) % 50 == 0 else (int(k[1:]), k[1:]))
    d.close()
