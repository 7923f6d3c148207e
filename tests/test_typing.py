"""The type stubs match the code, ship with the package, and type user code.

* stubtest compares every stub (sharedbox/_core.pyi, _dict.pyi, and the
  annotated .py modules) with the imported runtime: names, parameter names,
  kinds and defaults.  Its allowlist (stubtest_allowlist.txt) names the few
  objects it cannot introspect, each with a reason.
* nanobind functions and methods have no inspect.signature, so stubtest skips
  their signatures; test_native_stub_matches_nanobind_signatures compares them
  with the signatures nanobind itself records.
* mypy --strict type-checks tests/typed_usage.py (assert_type on every public
  call) and the examples.
"""

import ast
import inspect
import pathlib
import subprocess
import sys

import pytest

import sharedbox
from sharedbox import SharedDict



def needs_mypy():
    pytest.importorskip("mypy", reason="mypy is in the test extra (Python 3.10+): pip install '.[test]'")

TESTS = pathlib.Path(__file__).resolve().parent
ROOT = TESTS.parent
PACKAGE = pathlib.Path(sharedbox.__file__).resolve().parent
STUBS = ["_core.pyi", "_dict.pyi", "_redis.pyi"]


def run(args, cwd):
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_package_ships_stubs_and_py_typed():
    for name in ["py.typed", *STUBS]:
        assert (PACKAGE / name).is_file(), f"{name} is missing from the installed package"


def test_installed_stubs_are_the_source_stubs():
    """The checks below read the installed package; make sure it is current."""
    source = ROOT / "src" / "sharedbox"
    if not source.is_dir():
        pytest.skip("no source tree next to the tests")
    for name in STUBS:
        assert (PACKAGE / name).read_text() == (source / name).read_text(), (
            f"installed {name} differs from src/sharedbox/{name}: reinstall the package"
        )


def test_stubtest(tmp_path):
    needs_mypy()
    code, out = run(
        [
            "-m", "mypy.stubtest", "sharedbox",
            "--allowlist", str(TESTS / "stubtest_allowlist.txt"),
        ],
        cwd=tmp_path,
    )
    assert code == 0, out


def _shape(tree):
    """{qualified name: signature shape} for the functions, properties,
    attributes and classes of a stub: parameter names, kinds and default
    expressions (types are left out: ours are narrower than nanobind's)."""
    shapes = {}

    def args_shape(a):
        positional = a.posonlyargs + a.args
        defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
        shape = [("posonly" if p in a.posonlyargs else "pos", p.arg, d and ast.unparse(d))
                 for p, d in zip(positional, defaults)]
        if a.vararg:
            shape.append(("*", a.vararg.arg, None))
        for p, d in zip(a.kwonlyargs, a.kw_defaults):
            shape.append(("kw", p.arg, d and ast.unparse(d)))
        if a.kwarg:
            shape.append(("**", a.kwarg.arg, None))
        return tuple(shape)

    def walk(body, prefix):
        for node in body:
            if isinstance(node, ast.ClassDef):
                shapes[prefix + node.name] = "class"
                walk(node.body, prefix + node.name + ".")
            elif isinstance(node, ast.FunctionDef):
                decorators = {ast.unparse(d) for d in node.decorator_list}
                kind = "property" if "property" in decorators else args_shape(node.args)
                shapes[prefix + node.name] = kind
            elif isinstance(node, ast.AnnAssign):
                shapes[prefix + node.target.id] = "attribute"

    walk(tree.body, "")
    return shapes


def test_native_stub_matches_nanobind_signatures(tmp_path):
    pytest.importorskip("nanobind.stubgen", reason="nanobind is in the test extra")
    generated = tmp_path / "_core.pyi"
    code, out = run(
        ["-m", "nanobind.stubgen", "-m", "sharedbox._core", "-P", "-q", "-o", str(generated)],
        cwd=tmp_path,
    )
    assert code == 0, out
    ours = _shape(ast.parse((PACKAGE / "_core.pyi").read_text()))
    theirs = _shape(ast.parse(generated.read_text()))
    assert len(theirs) > 20  # the walk found the module's contents
    drift = {
        name: {"_core.pyi": ours.get(name, "missing"), "nanobind": theirs.get(name, "missing")}
        for name in sorted(ours.keys() | theirs.keys())
        if ours.get(name) != theirs.get(name)
    }
    assert not drift, f"src/sharedbox/_core.pyi no longer matches the extension: {drift}"


def test_stats_typeddicts_name_every_field(tmp_path):
    """The TypedDicts in _dict.pyi list exactly the keys the methods return."""
    tree = ast.parse((PACKAGE / "_dict.pyi").read_text())
    fields = {
        node.name: {f.target.id for f in node.body if isinstance(f, ast.AnnAssign)}
        for node in tree.body
        if isinstance(node, ast.ClassDef) and node.name.startswith("_")
    }
    from conftest import remove_segment, unique_name

    name = unique_name()
    try:
        with SharedDict(name, {"a": 1}, size=1 << 20, max_keys=8) as d:
            stats = d.get_stats()
            advice = d.recommend_sizing(100)
    finally:
        remove_segment(name)
    assert set(stats) == fields["_Stats"]
    assert set(advice) == fields["_SizingAdvice"]
    assert set(advice["current_stats"]) == fields["_Stats"]
    assert set(advice["sizing_recommendation"]) == fields["_SizingRecommendation"]
    assert set(advice["lock_recommendation"]) == fields["_LockRecommendation"]


@pytest.mark.parametrize(
    "target",
    [
        "tests/typed_usage.py",
        "examples/sensor_pipeline.py",
        "examples/worker_pool_cache.py",
        "examples/numpy_frames.py",
        "examples/zero_copy_frames.py",
    ],
)
def test_mypy_strict(target, tmp_path):
    needs_mypy()
    code, out = run(
        [
            "-m", "mypy", "--strict",
            "--cache-dir", str(tmp_path / "cache"),
            str(ROOT / target),
        ],
        cwd=tmp_path,
    )
    assert code == 0, out


def test_help_shows_the_signature_and_docstrings():
    text = inspect.getdoc(SharedDict) or ""
    assert "SharedDict(name, data=None, *, size=128 MiB, create=True, max_keys=128)" in text
    sig = inspect.signature(SharedDict)
    assert list(sig.parameters) == [
        "name", "data", "size", "create", "max_keys", "stripes", "mode",
        "attach_timeout", "allow_pickle", "strict",
    ]
    assert sig.parameters["size"].default == 128 * 1024 * 1024
    assert sig.parameters["max_keys"].default == 128
    assert sig.parameters["mode"].default == 0o600
    assert sig.parameters["size"].kind is inspect.Parameter.KEYWORD_ONLY
    import pydoc

    page = pydoc.render_doc(SharedDict, renderer=pydoc.plaintext)
    assert "SharedDict(name: 'str', data: 'Optional[Mapping[str, Any]]' = None, *," in page
    # Defaults read as written, and no sentinel shows as <object object at 0x...>.
    assert "size: 'int' = 128 * 1024 * 1024" in page
    assert "mode: 'int' = 0o600" in page
    assert " at 0x" not in page
    assert "pop(self, key: 'str', default: 'Any' = <no default>)" in page
    public = [n for n in dir(SharedDict) if not n.startswith("_")]
    public += ["__init__", "__enter__", "__exit__", "__iter__"]
    for method in public:
        assert inspect.getdoc(getattr(SharedDict, method)), f"SharedDict.{method} has no docstring"
    # __init__ documents itself, not the native constructor's positional form.
    assert "create: bool, size: int" not in inspect.getdoc(SharedDict.__init__)


def test_docstrings_list_errors_and_fields():
    setitem = inspect.getdoc(SharedDict.__setitem__) or ""
    for error in ("TypeError", "ValueError", "PickleRefusedError", "TooManyKeysError",
                  "SegmentFullError", "ValueTooLargeError", "SharedDictClosedError"):
        assert error in setitem, error
    for error in ("KeyError", "TypeError", "ValueError", "SharedDictClosedError"):
        assert error in (inspect.getdoc(SharedDict.__getitem__) or ""), error
    assert "KeyError" in (inspect.getdoc(SharedDict.__delitem__) or "")
    # The documented slots are still the native ones (a Python-level method
    # would make every d[k] = v slower): wrapper descriptors of the C slot.
    for slot in ("__setitem__", "__getitem__", "__delitem__"):
        assert type(getattr(SharedDict, slot)).__name__ == "wrapper_descriptor", slot

    from conftest import remove_segment, unique_name

    name = unique_name()
    try:
        with SharedDict(name, {"a": 1}, size=1 << 20, max_keys=8) as d:
            stats = d.get_stats()
            advice = d.recommend_sizing(100)
    finally:
        remove_segment(name)
    stats_doc = inspect.getdoc(SharedDict.get_stats) or ""
    for field in stats:
        assert field in stats_doc, f"get_stats() does not document {field!r}"
    sizing_doc = inspect.getdoc(SharedDict.recommend_sizing) or ""
    for field in (*advice, *advice["sizing_recommendation"], *advice["lock_recommendation"]):
        assert field in sizing_doc, f"recommend_sizing() does not document {field!r}"
    for doc in (stats_doc, sizing_doc):
        assert "SharedDictClosedError" in doc
