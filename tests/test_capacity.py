"""max_keys is the maximum number of keys; the segment size bounds the bytes."""

import pytest

from sharedbox import (
    SegmentFullError,
    SharedDict,
    TooManyKeysError,
    ValueTooLargeError,
)


def test_max_keys_is_exact(name):
    d = SharedDict(name, size=1 << 20, max_keys=10)
    for i in range(10):
        d[f"k{i}"] = i
    with pytest.raises(TooManyKeysError, match="max_keys=10"):
        d["k10"] = 10
    assert "k10" not in d and len(d) == 10
    d["k3"] = "overwrite at capacity works"
    assert d["k3"] == "overwrite at capacity works"
    del d["k0"]
    d["k10"] = 10  # room again after a delete
    with pytest.raises(TooManyKeysError):
        d["k11"] = 11
    assert d._check_integrity() == []
    d.close()


def test_too_many_keys_is_a_runtime_error_with_advice(name):
    d = SharedDict(name, size=1 << 20, max_keys=1)
    d["a"] = 1
    with pytest.raises(RuntimeError, match="recommend_sizing"):
        d["b"] = 2
    d.close()


def test_max_keys_holds_whatever_stripe_the_keys_land_in(name):
    # One stripe or many: the limit counts keys, not slots per stripe.
    for stripes in (1, 2, 64):
        n = f"{name}_{stripes}"
        d = SharedDict(n, size=1 << 20, max_keys=300, stripes=stripes)
        for i in range(300):
            d[str(i)] = i
        with pytest.raises(TooManyKeysError):
            d["extra"] = 1
        assert len(d) == 300 and d._check_integrity() == []
        d.close()
        d.unlink()


def test_setdefault_and_update_respect_max_keys(name):
    d = SharedDict(name, size=1 << 20, max_keys=2)
    d.setdefault("a", 1)
    d.update({"b": 2})
    with pytest.raises(TooManyKeysError):
        d.setdefault("c", 3)
    with pytest.raises(TooManyKeysError):
        d.update({"c": 3})
    assert dict(d.items()) == {"a": 1, "b": 2}
    d.close()


def test_stripe_count_is_stored_in_the_segment(name):
    a = SharedDict(name, size=1 << 20, max_keys=1000, stripes=16)
    b = SharedDict(name, create=False)
    assert b.stripes == 16
    a["x"] = 1
    assert b["x"] == 1
    a.close()
    b.close()


def test_full_segment_keeps_old_value(name):
    d = SharedDict(name, size=256 << 10, max_keys=100)
    d["keep"] = b"old"
    with pytest.raises(SegmentFullError, match="recommend_sizing"):
        for i in range(100):
            d[f"fill{i}"] = b"x" * 20_000
    filled = len(d)
    with pytest.raises(SegmentFullError):
        d["keep"] = b"y" * 100_000
    assert d["keep"] == b"old" and len(d) == filled
    for i in range(filled - 1):
        del d[f"fill{i}"]
    d["keep"] = b"y" * 100_000  # deleting freed the space
    assert d["keep"] == b"y" * 100_000
    assert d._check_integrity() == []
    d.close()


def test_value_larger_than_segment(name):
    d = SharedDict(name, size=256 << 10)
    d["k"] = 1
    with pytest.raises(ValueTooLargeError):
        d["k"] = b"z" * (1 << 20)
    with pytest.raises(SegmentFullError):  # its base class
        d["k2"] = b"z" * (1 << 20)
    assert d["k"] == 1 and len(d) == 1
    d.close()


MAX_KEY_BYTES = (1 << 24) - 1  # a record header keeps the key length in 24 bits


def test_a_key_may_have_up_to_16_mib_of_utf8(name):
    d = SharedDict(name, size=64 << 20)
    d["k"] = 1
    longest = "k" * MAX_KEY_BYTES
    d[longest] = "v"
    assert d[longest] == "v" and longest in d
    with pytest.raises(ValueError, match=f"at most {MAX_KEY_BYTES} bytes"):
        d["k" * (MAX_KEY_BYTES + 1)] = "v"
    with pytest.raises(ValueError, match="at most"):  # counted in UTF-8, not in characters
        d["é" * (MAX_KEY_BYTES // 2 + 1)] = "v"
    with pytest.raises(ValueError, match="at most"):
        d.incr("k" * (MAX_KEY_BYTES + 1))
    assert "k" * (MAX_KEY_BYTES + 1) not in d  # a key no record can hold is simply absent
    assert d["k"] == 1 and len(d) == 2 and d._check_integrity() == []
    d.close()


def test_churn_does_not_fragment_a_half_empty_segment(name):
    import random

    rng = random.Random(7)
    d = SharedDict(name, size=4 << 20, max_keys=2000)
    live = {}
    for step in range(20_000):
        k = f"k{rng.randrange(600)}"
        if rng.random() < 0.3 and k in live:
            del d[k]
            del live[k]
        else:
            v = b"v" * rng.choice([10, 100, 1000, 3000, 8000])
            d[k] = v
            live[k] = v
    assert d._check_integrity() == []
    stats = d.get_stats()
    assert stats["bytes_used"] < stats["segment_size"] // 2
    # A value a third of the free space still fits: free space coalesced.
    big = b"B" * (stats["bytes_free"] // 3)
    d["big"] = big
    assert d["big"] == big
    assert dict(d.items()) == {**live, "big": big}
    d.close()
