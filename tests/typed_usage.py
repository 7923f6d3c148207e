"""Type-checked, never run: `mypy --strict` must accept this file exactly.

tests/test_typing.py checks it.  `assert_type` fails the check if a stub's
type gets looser or different; each `type: ignore[...]` marks a call the
stubs must reject (under --strict an ignore that is no longer needed is an
error, so a stub that starts accepting a non-str key fails the check too).
"""

from collections.abc import ItemsView, KeysView, Mapping, MutableMapping, ValuesView
from typing import Any

import numpy as np
from numpy.typing import NDArray
from typing_extensions import assert_type

import sharedbox
from sharedbox import (
    SegmentFullError,
    SegmentReplacedError,
    SharedBoxError,
    SharedDict,
    SharedDictClosedError,
    SharedDictOpenError,
    TooManyKeysError,
)


def spec_calls() -> None:
    d = SharedDict("typed_usage", size=64 * 1024 * 1024, max_keys=1000)
    SharedDict("typed_usage", create=False)
    SharedDict("typed_usage_init", data={"key1": "value1", "key2": [1, 2, 3]})
    SharedDict(
        "typed_usage_all",
        None,
        size=1 << 20,
        create=True,
        max_keys=10,
        stripes=4,
        mode=0o660,
        attach_timeout=1.5,
        allow_pickle=False,
        strict=True,
    )
    SharedDict("typed_usage_pairs", [("a", 1), ("b", 2)])

    d["k"] = [1, 2, 3]
    assert_type(d["k"], Any)
    assert_type(d.get("k"), Any)
    assert_type(d.get("k", 0), Any)
    del d["k"]
    assert_type("k" in d, bool)
    assert_type(len(d), int)
    for key in d:
        assert_type(key, str)
    assert_type(d.keys(), KeysView[str])
    assert_type(d.items(), ItemsView[str, Any])
    assert_type(d.values(), ValuesView[Any])
    assert_type(d.keys_atomic(), list[str])
    assert_type(d.pop("k", None), Any)
    assert_type(d.popitem(), tuple[str, Any])
    assert_type(d.setdefault("k", 1), Any)
    d.update({"a": 1}, b=2)
    d.clear()

    assert_type(d.view("k"), NDArray[Any] | memoryview)
    with d.create_array("frame", (480, 640), np.float32) as arr:
        assert_type(arr, NDArray[Any])
    with d.create_array("column", 100, "int64", order="F") as arr:
        arr[:] = 0
    with d.create_bytes("blob", 4096) as mv:
        assert_type(mv, memoryview)

    stats = d.get_stats()
    assert_type(stats["total_entries"], int)
    assert_type(stats["pins"], int)
    assert_type(stats["pinned_bytes"], int)
    assert_type(stats["pin_holders"], dict[int, int])
    assert_type(stats["max_pins_per_process"], int)
    assert_type(stats["avg_value_pickle_bytes"], float)
    assert_type(stats["segment_name"], str)
    advice = d.recommend_sizing(target_entries=50000)
    assert_type(advice["sizing_recommendation"]["total_segment_size"], int)
    assert_type(advice["lock_recommendation"]["stripes"], int)
    assert_type(advice["current_stats"]["bytes_free"], int)

    assert_type(d.name, str)
    assert_type(d.segment_size, int)
    assert_type(d.max_keys, int)
    assert_type(d.stripes, int)
    assert_type(d.created, bool)
    assert_type(d.allow_pickle, bool)
    assert_type(d.mode, int)
    assert_type(d.is_closed(), bool)
    assert_type(d.is_current(), bool)
    d.close()
    d.unlink()

    tmp = SharedDict.temporary({"a": 1}, size=1 << 20, max_keys=8, prefix="typed")
    assert_type(tmp, SharedDict)
    tmp.close()
    for seg in sharedbox.list_segments():
        assert_type(seg, sharedbox.SegmentInfo)
        assert_type(seg["name"], str)
        assert_type(seg["entries"], int | None)
        assert_type(seg["mapped_by"], list[int])

    with SharedDict("typed_usage_ctx", max_keys=8) as ctx:
        assert_type(ctx, SharedDict)

    # A SharedDict is a MutableMapping[str, Any] for type checkers.
    as_mapping: MutableMapping[str, Any] = d
    read_only: Mapping[str, object] = d
    print(as_mapping, read_only, sharedbox.__version__.upper())


def errors() -> None:
    d = SharedDict("typed_usage_err")
    try:
        d["x"] = 1
    except (TooManyKeysError, SegmentFullError) as exc:
        assert_type(exc, TooManyKeysError | SegmentFullError)
        assert isinstance(exc, RuntimeError) and isinstance(exc, SharedBoxError)
    except SharedDictClosedError:
        pass
    try:
        d.unlink()
    except SharedDictOpenError as exc:
        assert isinstance(exc, RuntimeError)
    except SegmentReplacedError:
        pass


def rejected() -> None:
    d = SharedDict("typed_usage_bad")
    d[1] = "x"  # type: ignore[index]
    d.get(1)  # type: ignore[arg-type]
    d.keys_atomic(True)  # type: ignore[call-arg]
    SharedDict("n", 1 << 20)  # type: ignore[arg-type]
    SharedDict("n", size="big")  # type: ignore[arg-type]
    SharedDict("n", max_key=10)  # type: ignore[call-arg]
    d.get_stats()["no_such_field"]  # type: ignore[typeddict-item]
    d.view(1)  # type: ignore[arg-type]
    d.create_array("a", (2, 3), "f4", order="A")  # type: ignore[arg-type]
    d.create_bytes("b", b"xx")  # type: ignore[arg-type]
    SharedDict.temporary(create=False)  # type: ignore[call-arg]


def redis_dict() -> None:
    from sharedbox import MISSING, BackendUnavailableError, RedisDict, RedisLock

    d = RedisDict("typed_usage", url="redis://localhost:6379/0", max_keys=1000)
    RedisDict("typed_usage", create=False, allow_pickle=False, socket_timeout=1.0, shards=3)
    m: MutableMapping[str, Any] = d
    assert_type(d["k"], Any)
    assert_type(d.keys_atomic(), list[str])
    assert_type(d.incr("n"), int | float)
    assert_type(d.compare_and_set("k", MISSING, 1), bool)
    assert_type(d.version("k"), int | None)
    assert_type(d.wait("k", timeout=1.0), int | None)
    lock = d.lock("jobs")
    assert_type(lock, RedisLock)
    with lock:
        assert_type(lock.recovered, bool)
    assert_type(lock.acquire(timeout=0), bool)
    size: int = d.recommend_sizing(1000)["sizing_recommendation"]["total_segment_size"]
    assert_type(d.get_stats()["total_entries"], int)
    try:
        d.close()
        d.unlink()
    except BackendUnavailableError as exc:
        assert isinstance(exc, RuntimeError)
    d[1] = "x"  # type: ignore[index]
    RedisDict("n", url=5)  # type: ignore[arg-type]
    print(m, size)
