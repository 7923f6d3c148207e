"""get_stats() and recommend_sizing()."""

import pytest

from sharedbox import SharedDict, _core

SPEC_FIELDS = {
    "total_entries",
    "sample_size",
    "avg_key_utf8_bytes",
    "avg_value_pickle_bytes",
    "estimated_data_bytes",
    "segment_name",
}


def test_stats_fields_and_figures(name):
    d = SharedDict(name, size=8 << 20, max_keys=500, stripes=16)
    for i in range(200):
        d[f"key{i:04d}"] = "v" * 100  # 7-byte keys, 101-byte values (tag + text)
    st = d.get_stats()
    assert SPEC_FIELDS <= set(st)
    assert st["total_entries"] == st["entries"] == 200
    assert st["sample_size"] == 200
    assert st["avg_key_utf8_bytes"] == 7
    assert st["avg_value_pickle_bytes"] == 101
    assert st["estimated_data_bytes"] == 200 * (7 + 101)
    assert st["segment_name"] == name
    assert st["segment_size"] == 8 << 20
    assert st["max_keys"] == 500 and st["stripes"] == 16
    assert 0 < st["bytes_used"] < st["segment_size"]
    assert st["bytes_used"] + st["bytes_free"] < st["segment_size"]  # header, stripes, bitmap
    assert st["bytes_used"] >= 200 * (32 + 7 + 101)  # header + key + value
    d.close()


def test_stats_of_empty_dict(sd):
    st = sd.get_stats()
    assert st["total_entries"] == 0 and st["avg_key_utf8_bytes"] == 0.0


def test_stats_see_every_entry_not_a_prefix(name):
    d = SharedDict(name, size=8 << 20, max_keys=1000)
    for i in range(900):
        d[f"k{i:04d}"] = "x" * (1000 if i >= 800 else 10)  # the big ones sort last
    st = d.get_stats()
    expected = (100 * 1001 + 800 * 11) / 900
    assert st["avg_value_pickle_bytes"] == pytest.approx(expected)
    d.close()


def test_recommend_sizing_shape(sd):
    sd["a"] = 1
    rec = sd.recommend_sizing(target_entries=10_000)
    assert set(rec) >= {"current_stats", "target_entries", "sizing_recommendation", "lock_recommendation"}
    assert rec["target_entries"] == 10_000
    size = rec["sizing_recommendation"]["total_segment_size"]
    assert isinstance(size, int) and size > 0
    stripes = rec["lock_recommendation"]["stripes"]
    assert stripes & (stripes - 1) == 0 and 1 <= stripes <= 4096
    assert rec["current_stats"]["total_entries"] == 1


def test_recommend_sizing_default_target_is_max_keys(sd):
    assert sd.recommend_sizing()["target_entries"] == sd.max_keys


@pytest.mark.parametrize("bad", [0, -1])
def test_recommend_sizing_rejects_bad_targets(sd, bad):
    with pytest.raises(ValueError):
        sd.recommend_sizing(target_entries=bad)
    with pytest.raises(TypeError):
        sd.recommend_sizing(target_entries="many")


@pytest.mark.parametrize(
    "make_value, target",
    [
        (lambda i: i, 20_000),
        (lambda i: f"value-{i}" * 3, 20_000),
        (lambda i: {"id": i, "tags": ["a", "b"], "score": i / 3}, 5_000),
        (lambda i: b"\x01" * 5000, 2_000),
    ],
    ids=["int", "str", "dict", "5kB-bytes"],
)
def test_recommendation_is_honest(name, make_value, target):
    """A dict built from the recommendation holds target entries like the
    current ones, and is not wildly larger than what they use."""
    d = SharedDict(name, size=32 << 20, max_keys=1000)
    for i in range(500):
        d[f"sample-key-{i}"] = make_value(i)
    rec = d.recommend_sizing(target_entries=target)
    size = rec["sizing_recommendation"]["total_segment_size"]
    d.close()
    d.unlink()

    for stripes in (None, rec["lock_recommendation"]["stripes"]):
        fresh = SharedDict(name, size=size, max_keys=target, stripes=stripes)
        for i in range(target):
            fresh[f"sample-key-{i}"] = make_value(i)
        assert len(fresh) == target
        used = fresh.get_stats()["bytes_used"]
        assert fresh._check_integrity() == []
        fresh.close()
        fresh.unlink()
        assert size < 2 * used + (2 << 20), (size, used)


def test_lock_recommendation_is_usable(name):
    d = SharedDict(name, size=4 << 20, max_keys=100)
    d["k"] = 1
    rec = d.recommend_sizing(target_entries=50_000)["lock_recommendation"]
    assert rec["current_stripes"] == d.stripes
    assert rec["stripes"] >= _core.default_stripes(50_000)
    d.close()
    d.unlink()
    e = SharedDict(name, size=4 << 20, max_keys=50_000, stripes=rec["stripes"])
    assert e.stripes == rec["stripes"]
    e.close()
