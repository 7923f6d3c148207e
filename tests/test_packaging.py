"""The release path, end to end, as a user without a compiler meets it.

scripts/build-wheel.sh builds the sdist, a wheel from that sdist and repairs
the wheel with auditwheel.  These tests check what it made: the wheel has a
manylinux tag and the files a user needs; the sdist has everything a build
needs and none of a developer's leftovers; and a fresh virtual environment,
with no compiler or CMake on PATH, installs the wheel without building
anything and passes a part of this suite against it (the package imported
from that environment, never from src/).

About a minute on two cores (most of it compiling), so marked slow: the full
`python -m pytest` of CI runs it; the fast suite does not.  The build takes
scikit-build-core and nanobind from PyPI, as pip would.
"""

import importlib.util
import os
import re
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import sharedbox

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.packaging]

WHEEL_NAME = re.compile(
    r"^sharedbox-(?P<version>[^-]+)-(?P<py>cp3\d+)-(?P=py)-"
    r"(?P<plat>manylinux_2_(?P<glibc>\d+)_(?:x86_64|aarch64))\.whl$"
)

# Tests that run against the installed wheel: the mapping protocol, values,
# processes attaching from spawned children, NumPy, the CLI.  (The C++ engine
# tests build from source and the typing tests check the stubs in src/: they
# have nothing to say about an installed wheel.)
WHEEL_TESTS = [
    "tests/test_mapping.py",
    "tests/test_mapping_cpython.py",
    "tests/test_values.py",
    "tests/test_numpy.py",
    "tests/test_multiprocess.py",
    "tests/test_cli.py",
]


def _has_cpython_mapping_tests():
    try:
        return importlib.util.find_spec("test.mapping_tests") is not None
    except ImportError:
        return False


def _run(cmd, **kwargs):
    kwargs.setdefault("timeout", 600)
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", **kwargs)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """(sdist, repaired wheel, the script's output), built once for the module."""
    out = tmp_path_factory.mktemp("wheelhouse")
    proc = _run(["bash", str(ROOT / "scripts" / "build-wheel.sh"), str(out)],
                env={**os.environ, "PYTHON": sys.executable}, timeout=900)
    assert proc.returncode == 0, proc.stdout[-12000:]
    sdist, wheel = (Path(line) for line in proc.stdout.strip().splitlines()[-2:])
    assert sdist.parent == out and wheel.parent == out, proc.stdout[-2000:]
    assert sorted(p.name for p in out.iterdir()) == sorted([sdist.name, wheel.name])
    return sdist, wheel, proc.stdout


def test_wheel_has_a_manylinux_tag(release):
    _, wheel, output = release
    match = WHEEL_NAME.match(wheel.name)
    assert match, wheel.name
    assert match["version"] == sharedbox.__version__
    assert match["py"] == f"cp3{sys.version_info.minor}"
    # auditwheel show, run on the repaired wheel, agrees with its name.
    said = " ".join(output.split())
    assert f'{wheel.name} is consistent with the following platform tag: "{match["plat"]}"' \
        in said, output[-3000:]
    with zipfile.ZipFile(wheel) as zf:
        tags = [line for line in zf.read("sharedbox-%s.dist-info/WHEEL" % match["version"])
                .decode().splitlines() if line.startswith("Tag:")]
    assert tags == [f"Tag: {match['py']}-{match['py']}-{match['plat']}"]


def test_wheel_holds_the_package_and_nothing_else(release):
    _, wheel, _ = release
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"sharedbox", f"sharedbox-{sharedbox.__version__}.dist-info"}, top
    for path in (ROOT / "src" / "sharedbox").iterdir():
        if path.suffix in (".py", ".pyi") or path.name == "py.typed":
            assert f"sharedbox/{path.name}" in names
    extensions = [n for n in names if re.fullmatch(r"sharedbox/_core\.cpython-3\d+-.*\.so", n)]
    assert len(extensions) == 1, names
    # Nothing had to be grafted: the extension links only to system libraries.
    assert not [n for n in names if ".libs/" in n], names


def _sdist_members(sdist):
    with tarfile.open(sdist) as tf:
        names = tf.getnames()
    prefix = f"sharedbox-{sharedbox.__version__}/"
    assert all(n.startswith(prefix) or n + "/" == prefix for n in names), names[:5]
    return {n[len(prefix):] for n in names if n.startswith(prefix)}


def test_sdist_has_what_a_build_needs(release):
    sdist, _, _ = release
    members = _sdist_members(sdist)
    needed = {"pyproject.toml", "CMakeLists.txt", "README.md", "PKG-INFO"}
    # Every source the build compiles or packages: the engine with its headers,
    # the binding and the Python package.
    for path in (ROOT / "src").rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".so":
            needed.add(path.relative_to(ROOT).as_posix())
    assert any(p.endswith(".hpp") for p in needed)
    # What a packager needs to run the tests from it, the C++ ones included.
    for folder in ("tests", "tests/engine", "tests/fuzz/corpus", "examples", "docs"):
        for path in (ROOT / folder).iterdir():
            if path.is_file() and not path.name.startswith("."):
                needed.add(path.relative_to(ROOT).as_posix())
    assert not needed - members, sorted(needed - members)


def test_sdist_leaves_out_build_and_ci_leftovers(release):
    sdist, _, _ = release
    members = _sdist_members(sdist)
    unwanted = re.compile(r"(^|/)(__pycache__|\.pytest_cache|\.hypothesis)/|\.so$|\.pyc$|"
                          r"^(\.ci|\.github|\.git|build|dist|wheelhouse|venv|\.venv[^/]*|"
                          r"\.[^/]*-venv|\.bench-venvs|benchmarks/results)/")
    assert not [m for m in members if unwanted.search(m)], \
        sorted(m for m in members if unwanted.search(m))[:20]


def test_fresh_venv_installs_the_wheel_without_building_and_passes_tests(release, tmp_path):
    _, wheel, _ = release
    venv = tmp_path / "venv"
    proc = _run([sys.executable, "-m", "venv", str(venv)])
    assert proc.returncode == 0, proc.stdout
    py = venv / "bin" / "python"

    # No compiler, no CMake: PATH is the venv's bin alone, and CC/CXX fail.
    bare = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    bare.update(PATH=str(venv / "bin"), CC="/bin/false", CXX="/bin/false")
    proc = _run([str(py), "-m", "pip", "install", "--no-index", "--no-deps",
                 "--only-binary=:all:", "--no-build-isolation", "--disable-pip-version-check",
                 str(wheel)], env=bare, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout
    assert "Successfully installed sharedbox" in proc.stdout, proc.stdout
    for building in ("Building wheel", "Preparing metadata", "setup.py", "cmake"):
        assert building not in proc.stdout, proc.stdout

    # The test tools (pytest, hypothesis, NumPy) are borrowed from the running
    # environment by a .pth line, which puts them after the venv's own
    # site-packages: the venv's sharedbox, from the wheel, comes first.
    fresh_site = Path(_run([str(py), "-c", "import site; print(site.getsitepackages()[0])"],
                           env=bare).stdout.strip())
    borrowed = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (fresh_site / "zz_borrowed_test_tools.pth").write_text("\n".join(borrowed) + "\n")

    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    probe = ("import sharedbox, sharedbox._core as c, pytest; "
             "print(sharedbox.__file__); print(c.__file__)")
    proc = _run([str(py), "-c", probe], env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout
    for line in proc.stdout.split():
        assert Path(line).resolve().is_relative_to(fresh_site.resolve()), proc.stdout

    tests = list(WHEEL_TESTS)
    if not _has_cpython_mapping_tests():  # it would skip (or, under CI, fail) on its own
        tests.remove("tests/test_mapping_cpython.py")
    proc = _run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m",
                 "not slow and not torture and not fuzz and not sanitizer", *tests],
                env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-12000:]
    summary = re.search(r"^(\d+) passed", proc.stdout.strip().splitlines()[-1])
    assert summary and int(summary[1]) > 100, proc.stdout[-3000:]
    assert "failed" not in proc.stdout.strip().splitlines()[-1]
    assert "skipped" not in proc.stdout.strip().splitlines()[-1], proc.stdout[-3000:]
