"""Random operation sequences against a plain dict model (hypothesis), with the
engine's own invariant check after every step."""

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from conftest import remove_segment, unique_name
from sharedbox import SegmentFullError, SharedDict, TooManyKeysError

KEYS = st.sampled_from([f"k{i}" for i in range(40)] + ["", "ü", "x" * 300])
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=50),
    st.integers(0, 3000).map(lambda n: b"b" * n),
    st.lists(st.integers(), max_size=5),
    st.integers(20_000, 60_000).map(lambda n: bytes([n % 256]) * n),
)
MAX_KEYS = 30


class SharedDictMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.name = unique_name("model")
        # Small on purpose: the full-segment and max_keys paths get exercised.
        self.d = SharedDict(self.name, size=384 << 10, max_keys=MAX_KEYS, stripes=4)
        self.model = {}

    @rule(key=KEYS, value=VALUES)
    def put(self, key, value):
        try:
            self.d[key] = value
        except TooManyKeysError:
            assert key not in self.model and len(self.model) == MAX_KEYS
        except SegmentFullError:
            pass  # the dict must be unchanged: the invariant checks it
        else:
            self.model[key] = value

    @rule(key=KEYS)
    def delete(self, key):
        if key in self.model:
            del self.d[key]
            del self.model[key]
        else:
            try:
                del self.d[key]
            except KeyError:
                pass
            else:
                raise AssertionError("deleted a key the model does not have")

    @rule(key=KEYS, value=VALUES)
    def setdefault(self, key, value):
        try:
            got = self.d.setdefault(key, value)
        except (TooManyKeysError, SegmentFullError):
            assert key not in self.model
            return
        expected = self.model.setdefault(key, value)
        assert got == expected

    @rule(key=KEYS)
    def pop(self, key):
        assert self.d.pop(key, "missing") == self.model.pop(key, "missing")

    @rule()
    def popitem(self):
        # No precondition on the model: whether a big value fitted depends on
        # the segment's random hash seed, so the model's size is not a pure
        # function of the drawn data.
        if not self.model:
            try:
                self.d.popitem()
            except KeyError:
                return
            raise AssertionError("popitem() on an empty dict returned an item")
        key, value = self.d.popitem()
        assert self.model.pop(key) == value

    @rule(key=KEYS)
    def get(self, key):
        assert self.d.get(key, "missing") == self.model.get(key, "missing")
        assert (key in self.d) == (key in self.model)

    @invariant()
    def same_contents(self):
        assert len(self.d) == len(self.model)
        assert sorted(self.d.keys_atomic()) == sorted(self.model)
        assert self.d._check_integrity() == []

    def teardown(self):
        assert dict(self.d.items()) == self.model
        self.d.close()
        remove_segment(self.name)


SharedDictMachine.TestCase.settings = settings(
    max_examples=int(__import__("os").environ.get("SBX_MODEL_EXAMPLES", "60")),
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSharedDictModel = SharedDictMachine.TestCase
