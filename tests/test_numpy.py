"""NumPy arrays: stored natively (dtype + shape + raw data), returned as new arrays."""

import numpy as np
import pytest

from sharedbox import SharedDict

DTYPES = [
    "i1", "u1", "i2", "u2", "<i4", ">i4", "i8", ">u8", "f2", "f4", ">f8", "f8",
    "c8", "c16", ">c16", "?", "M8[ns]", "M8[D]", "m8[s]", "U7", ">U3", "S5", "V8",
    np.dtype([("a", "<i4"), ("b", ">f8", (2,)), ("c", "U3")]),
    np.dtype([("x", "u1"), ("y", "<i8")], align=True),
    np.dtype({"names": ["p"], "formats": ["<i2"], "offsets": [2], "itemsize": 8}),
]


def sample(dtype, shape=(3, 4)):
    dtype = np.dtype(dtype)
    raw = np.random.default_rng(0).integers(0, 256, size=int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
    arr = raw.view(dtype).reshape(shape)
    if dtype.kind in "fc":
        arr = np.nan_to_num(arr)
    return arr


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtype_roundtrip(md, dtype):
    arr = sample(dtype)
    md["a"] = arr
    got = md["a"]
    assert type(got) is np.ndarray
    assert got.dtype == arr.dtype
    assert got.shape == arr.shape
    assert got.tobytes() == arr.tobytes()


@pytest.mark.parametrize("shape", [(), (0,), (0, 5), (1,), (7,), (2, 3, 4), (1, 1, 1, 1, 5)])
def test_shapes(md, shape):
    arr = np.arange(int(np.prod(shape)), dtype="f8").reshape(shape)
    md["a"] = arr
    got = md["a"]
    assert got.shape == shape and np.array_equal(got, arr)


def test_returned_array_is_new_and_writeable(md):
    arr = np.arange(10)
    md["a"] = arr
    got = md["a"]
    assert got.flags.writeable and got.flags.owndata
    got[0] = 99
    assert md["a"][0] == 0
    arr[1] = 77
    assert md["a"][1] == 1


def test_non_contiguous_input(md):
    base = np.arange(100, dtype="i4").reshape(10, 10)
    for view in (base[::2, 1::3], base.T, base[:, 3], base[::-1]):
        md["v"] = view
        got = md["v"]
        assert np.array_equal(got, view) and got.dtype == view.dtype


def test_fortran_order_is_kept(md):
    arr = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    md["f"] = arr
    got = md["f"]
    assert np.array_equal(got, arr) and got.flags.f_contiguous


def test_object_arrays_and_subclasses_are_pickled(md):
    obj = np.array([1, "two", None], dtype=object)
    md["o"] = obj
    got = md["o"]
    assert got.dtype == object and list(got) == [1, "two", None]
    m = np.ma.masked_array([1, 2, 3], mask=[0, 1, 0])
    md["m"] = m
    gm = md["m"]
    assert type(gm) is np.ma.MaskedArray and gm.mask.tolist() == [False, True, False]
    rec = np.rec.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")])
    md["r"] = rec
    assert type(md["r"]) is np.recarray


def test_numpy_scalars_keep_their_type(md):
    for scalar in (np.float32(1.5), np.int16(-3), np.bool_(True), np.datetime64("2024-01-01")):
        md["s"] = scalar
        got = md["s"]
        assert type(got) is type(scalar) and got == scalar


def test_array_data_is_64_byte_aligned_in_the_segment(sd):
    # The data of every stored array starts on a 64-byte boundary of the
    # segment; read it back through a raw mapping of the segment to check.
    import mmap

    arr = np.arange(1000, dtype="u8") + 0xABCDEF0000000000
    for key in ("a", "bb", "a_longer_key_of_odd_length"):
        sd[key] = arr
    with open(f"/dev/shm/{sd.name}", "rb") as f:
        raw = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        try:
            needle = arr[:4].tobytes()
            pos = raw.find(needle)
            found = 0
            while pos != -1:
                assert pos % 64 == 0
                found += 1
                pos = raw.find(needle, pos + 1)
            assert found == 3
        finally:
            raw.close()


def test_large_array_roundtrip(sd_big):
    arr = np.random.default_rng(1).random(8 * 1024 * 1024 // 8)
    sd_big["big"] = arr
    got = sd_big["big"]
    assert np.array_equal(got, arr)


@pytest.fixture
def sd_big(name):
    d = SharedDict(name, size=64 << 20)
    yield d
    d.close()
