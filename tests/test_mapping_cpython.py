"""CPython's own mapping-protocol tests, run against SharedDict.

Source: the standard library's ``test.mapping_tests`` module (CPython's
``Lib/test/mapping_tests.py``: ``BasicTestMappingProtocol``,
``TestMappingProtocol``, ``TestHashMappingProtocol``), imported from the
running interpreter, not copied.  Each class is subclassed here with a
``type2test`` that makes a SharedDict on a fresh, uniquely named segment;
every segment a test made is checked for integrity, closed and unlinked
afterwards.

The classes test ``dict``, so a few of their methods rely on what
docs/faq.md documents as differences; only those are overridden below, each
with a one-line reason, and each override still runs the checks that do
apply (mostly: the same steps with ``str`` keys, plus an assertion of the
documented behaviour).

Some Python builds leave the ``test`` package out (Debian's python3 ships it
separately as libpython3.X-testsuite).  Without it this module skips, except
under CI (the CI environment variable is set), where a missing module fails
the run instead: CI's interpreter (the one that made .ci/run's venv) has it.
"""

import os
import uuid

import pytest

from sharedbox import SharedDict
from sharedbox import _core

try:
    from test import mapping_tests
except ImportError as exc:  # pragma: no cover - depends on the Python build
    if os.environ.get("CI"):
        raise ImportError(
            "test.mapping_tests is missing from this Python; CI must run CPython's "
            "mapping-protocol tests (install the interpreter's test suite)"
        ) from exc
    pytest.skip(
        f"CPython's test.mapping_tests is not installed with this Python ({exc})",
        allow_module_level=True,
    )


class FreshSharedDict(SharedDict):
    """``FreshSharedDict(*args, **kwargs)`` is a SharedDict on a new segment,
    filled like ``dict(*args, **kwargs)``: the dict-like constructor that the
    CPython tests call as ``type2test``.  Every instance is recorded so that
    the test's tearDown can check, close and unlink it."""

    made: list = []

    def __init__(self, *args, **kwargs):
        name = f"sbxcpy_{os.getpid()}_{uuid.uuid4().hex[:10]}"
        # 4096 keys: test_popitem fills two dicts with up to 2048 keys each.
        super().__init__(name, size=8 << 20, max_keys=4096)
        FreshSharedDict.made.append(self)
        self.update(dict(*args, **kwargs))


class _SharedDictFixture:
    type2test = FreshSharedDict

    def tearDown(self):
        made, FreshSharedDict.made = FreshSharedDict.made, []
        problems = []
        for d in made:
            if not d.is_closed():
                problems += d._check_integrity()
                d.close()
            try:
                _core.unlink_segment(d.name)
            except FileNotFoundError:
                pass
        super().tearDown()
        assert problems == [], problems


class RaisesOnEq:
    """A picklable value whose comparison raises (module level, so it pickles)."""

    def __eq__(self, other):
        raise EqError()

    __hash__ = object.__hash__


class EqError(Exception):
    pass


class _MappingDifferences:
    """Overrides of TestMappingProtocol methods that rely on a documented difference."""

    def _assert_non_str_key_rejected(self, key):
        d = self._empty_mapping()
        for op in (lambda: d.__setitem__(key, 1), lambda: d[key], lambda: key in d,
                   lambda: d.pop(key), lambda: d.setdefault(key, [])):
            with self.assertRaisesRegex(TypeError, "keys must be str"):
                op()
        self.assertEqual(len(d), 0)

    def test_values(self):
        # Reason: keys must be str (faq: "Why must keys be str?"); same check with a str key.
        mapping_tests.BasicTestMappingProtocol.test_values(self)
        self.assertEqual(list(self._full_mapping({"1": 2}).values()), [2])
        self._assert_non_str_key_rejected(1)

    def test_items(self):
        # Reason: keys must be str; same check with a str key.
        mapping_tests.BasicTestMappingProtocol.test_items(self)
        self.assertEqual(list(self._full_mapping({"1": 2}).items()), [("1", 2)])

    def test_clear(self):
        # Reason: keys must be str; same check with str keys.
        d = self._full_mapping({"1": 1, "2": 2, "3": 3})
        d.clear()
        self.assertEqual(d, {})
        self.assertRaises(TypeError, d.clear, None)

    def test_update(self):
        # Reason: keys must be str; the dict-specific part again with str keys.
        mapping_tests.BasicTestMappingProtocol.test_update(self)
        d = self._empty_mapping()
        d.update({"1": 100})
        d.update({"2": 20})
        d.update({"1": 1, "2": 2, "3": 3})
        self.assertEqual(d, {"1": 1, "2": 2, "3": 3})
        d.update()
        self.assertEqual(d, {"1": 1, "2": 2, "3": 3})
        d = self._empty_mapping()
        d.update(x=100)
        d.update(x=1, y=2, z=3)
        self.assertEqual(d, {"x": 1, "y": 2, "z": 3})
        d = self._empty_mapping()
        d.update([("x", 100), ("y", 20)], x=1, y=2)
        self.assertEqual(d, {"x": 1, "y": 2})
        d = self._full_mapping({"1": 3, "2": 4})
        d.update(self._full_mapping({"1": 2, "3": 4, "5": 6}).items())
        self.assertEqual(d, {"1": 2, "2": 4, "3": 4, "5": 6})
        self.assertRaises(TypeError, d.update, {1: 1})

    def test_fromkeys(self):
        # Reason: fromkeys() is not provided (faq: "What about copy(), |, fromkeys()").
        self.assertFalse(hasattr(self.type2test, "fromkeys"))

    def test_copy(self):
        # Reason: copy() is not provided (a copy would be another segment); dict(d) copies.
        d = self._full_mapping({"1": 1, "2": 2, "3": 3})
        self.assertFalse(hasattr(d, "copy"))
        plain = dict(d)
        self.assertEqual(plain, {"1": 1, "2": 2, "3": 3})
        self.assertIs(type(plain), dict)

    def test_setdefault(self):
        # Reason: values are copied in and out (faq: "I changed a value I read").
        mapping_tests.BasicTestMappingProtocol.test_setdefault(self)
        d = self._empty_mapping()
        self.assertIsNone(d.setdefault("key0"))
        d.setdefault("key0", [])
        self.assertIsNone(d.setdefault("key0"))
        d.setdefault("key", []).append(3)  # appends to the caller's object, not the stored copy
        self.assertEqual(d["key"], [])
        self.assertEqual(d.setdefault("key", [9]), [])

    def test_popitem(self):
        # Reason: key order is set by a per-segment hash, so two dicts with the same
        # keys pop in different orders (faq: "In what order are keys returned?");
        # no copy() either.  Every pair must still come out exactly once.
        mapping_tests.BasicTestMappingProtocol.test_popitem(self)
        for log2size in range(12):
            size = 2**log2size
            a = self._full_mapping({repr(i): i for i in range(size)})
            seen = set()
            for _ in range(size):
                key, value = a.popitem()
                self.assertEqual(value, int(key))
                seen.add(key)
            self.assertEqual(seen, {repr(i) for i in range(size)})
            self.assertFalse(a)
            self.assertRaises(KeyError, a.popitem)


class _HashMappingDifferences(_MappingDifferences):
    """Overrides of TestHashMappingProtocol methods that rely on a documented difference."""

    def test_getitem(self):
        # Reason: keys must be str, so keys with a failing __eq__/__hash__ are TypeErrors.
        mapping_tests.TestMappingProtocol.test_getitem(self)
        self._assert_non_str_key_rejected(RaisesOnEq())

    def test_pop(self):
        # Reason: keys must be str, so a key with a failing __hash__ is a TypeError.
        mapping_tests.TestMappingProtocol.test_pop(self)
        self._assert_non_str_key_rejected(RaisesOnEq())

    def test_setdefault(self):
        # Reason: values are copied, and a key with a failing __hash__ is a TypeError.
        _MappingDifferences.test_setdefault(self)
        self._assert_non_str_key_rejected(RaisesOnEq())

    def test_mutatingiteration(self):
        # Reason: keys must be str; iteration walks the keys present when it starts
        # (faq: "Is iteration a snapshot?"): no RuntimeError, new keys not visited.
        d = self._full_mapping({"1": 1})
        visited = []
        for key in d:
            visited.append(key)
            d[key + "1"] = 1
        self.assertEqual(visited, ["1"])
        self.assertEqual(sorted(d), ["1", "11"])

    def test_repr(self):
        # Reason: repr() shows the segment's name and size, not the contents (faq).
        d = self._full_mapping({"1": 2})
        self.assertIn(d.name, repr(d))
        self.assertNotIn("{", repr(d))

    def test_repr_deep(self):
        # Reason: repr() never shows the contents, so nesting cannot recurse (faq).
        d = self._empty_mapping()
        d["1"] = self._empty_mapping()  # stored as a handle: the inner one's name
        self.assertLess(len(repr(d)), 120)

    def test_eq(self):
        # Reason: keys must be str, so the failing __eq__ is in a value instead of a key.
        self.assertEqual(self._empty_mapping(), self._empty_mapping())
        self.assertEqual(self._full_mapping({"1": 2}), self._full_mapping({"1": 2}))
        d1 = self._full_mapping({"1": RaisesOnEq()})
        d2 = self._full_mapping({"1": 1})
        self.assertRaises(EqError, lambda: d1 == d2)
        self.assertRaises(EqError, lambda: d1 == {"1": 1})


class TestBasicMappingProtocol(_SharedDictFixture, mapping_tests.BasicTestMappingProtocol):
    pass


class TestMappingProtocol(_SharedDictFixture, _MappingDifferences,
                          mapping_tests.TestMappingProtocol):
    pass


class TestHashMappingProtocol(_SharedDictFixture, _HashMappingDifferences,
                              mapping_tests.TestHashMappingProtocol):
    pass


def test_overrides_name_cpython_tests():
    """Every override replaces a test CPython defines (a renamed upstream test
    would otherwise run unadapted beside a stale override), and the basic
    protocol class runs CPython's tests unchanged."""
    overridden = {n for n in (*vars(_MappingDifferences), *vars(_HashMappingDifferences))
                  if n.startswith("test")}
    upstream = {n for n in dir(mapping_tests.TestHashMappingProtocol) if n.startswith("test")}
    assert overridden and overridden <= upstream, sorted(overridden - upstream)
    assert not [n for n in vars(TestBasicMappingProtocol) if n.startswith("test")]
