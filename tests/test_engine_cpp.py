"""Builds and runs the C++ engine tests (tests/engine/test_engine.cpp).

The engine is tested on its own, without the binding: CMake configures the
repository with SHAREDBOX_BUILD_TESTS=ON (no Python needed) into a temporary
directory and builds the sharedbox_engine_tests executable, which prints
"N passed, M failed" as its last line and exits non-zero on any failure.
"""

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TSAN_SUPPRESSIONS = ROOT / "tests" / "engine" / "tsan.supp"
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed$", re.MULTILINE)


def _find_cmake():
    exe = shutil.which("cmake")
    if exe:
        return exe
    try:  # the "cmake" package from PyPI ships its own binary
        import cmake
    except ImportError:
        return None
    exe = Path(cmake.CMAKE_BIN_DIR) / "cmake"
    return str(exe) if exe.exists() else None


def _find_cxx():
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _tools():
    """(cmake, c++ compiler), or a pytest.skip naming what is missing."""
    cmake, cxx = _find_cmake(), _find_cxx()
    missing = [what for what, found in (("cmake", cmake), ("C++ compiler", cxx)) if not found]
    if missing:
        pytest.skip(f"cannot build the C++ engine tests: no {' and no '.join(missing)} found")
    return cmake, cxx


def _run(cmd, timeout, env=None, cwd=None):
    return subprocess.run(cmd, cwd=cwd, env=env, timeout=timeout, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace")


def _build(build_dir, *cmake_args, target="sharedbox_engine_tests"):
    """Configures and builds `target`; returns the executable's path."""
    cmake, _ = _tools()
    configure = [cmake, "-S", str(ROOT), "-B", str(build_dir), "-DSHAREDBOX_BUILD_TESTS=ON",
                 *cmake_args]
    # The default generator (Makefiles) needs make; fall back to Ninja without it.
    if not os.environ.get("CMAKE_GENERATOR") and not shutil.which("make") and shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    for step in (configure,
                 [cmake, "--build", str(build_dir), "--target", target, "-j", "2"]):
        proc = _run(step, timeout=600)
        assert proc.returncode == 0, f"{' '.join(step)} failed:\n{proc.stdout[-8000:]}"
    exe = Path(build_dir) / target
    assert exe.exists(), f"the build did not produce {exe}"
    return exe


def _run_tests(cmd, timeout, env, cwd):
    """Runs the test program; afterwards removes any segment it left behind.

    The program unlinks its segments itself, but not when it dies: a
    sanitizer abort, a crash, or the kill on timeout.  Its segment names
    start with sbx_enginetest_<pid>_ (the fuzzer's with sbx_fuzz_<pid>_).
    """
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace")
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        out += f"\n[killed after {timeout} s]"
    finally:
        for prefix in ("sbx_enginetest", "sbx_fuzz"):
            for leftover in Path("/dev/shm").glob(f"{prefix}_{proc.pid}_*"):
                leftover.unlink(missing_ok=True)
    return subprocess.CompletedProcess(cmd, proc.returncode, out)


def _check_output(proc):
    out = proc.stdout
    assert proc.returncode == 0, f"exit status {proc.returncode}:\n{out[-12000:]}"
    assert " 0 failed" in out, out[-12000:]
    summary = SUMMARY.findall(out)
    assert len(summary) == 1 and int(summary[0][0]) > 0, out[-12000:]


def test_engine_cpp(tmp_path):
    """Every engine test case, in an optimised build."""
    exe = _build(tmp_path / "build", "-DCMAKE_BUILD_TYPE=Release")
    _check_output(_run_tests([str(exe)], timeout=120, env=None, cwd=tmp_path))


@pytest.mark.sanitizer
@pytest.mark.slow
def test_engine_cpp_threads_tsan(tmp_path):
    """The multi-threaded case under ThreadSanitizer.

    RelWithDebInfo so that reports carry source lines.  The suppressions
    cover only the engine's validated lock-free reads (see tsan.supp), and
    --iterations is lowered because every suppressed report still costs
    milliseconds.
    """
    exe = _build(tmp_path / "build", "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
                 "-DSHAREDBOX_SANITIZE=thread")
    env = dict(os.environ)
    env["TSAN_OPTIONS"] = " ".join(filter(None, [
        env.get("TSAN_OPTIONS"), f"suppressions={TSAN_SUPPRESSIONS}", "second_deadlock_stack=1"]))
    cmd = [str(exe), "--iterations=1000", "threads", "pin_threads"]
    proc = _run_tests(cmd, timeout=600, env=env, cwd=tmp_path)
    # GCC's TSan runtime cannot start on kernels with high mmap randomisation
    # (vm.mmap_rnd_bits > 28); run it again with ASLR off for this process.
    if "unexpected memory mapping" in proc.stdout and shutil.which("setarch"):
        proc = _run_tests(["setarch", platform.machine(), "-R", *cmd], timeout=600, env=env,
                          cwd=tmp_path)
    _check_output(proc)


@pytest.mark.sanitizer
@pytest.mark.slow
def test_engine_cpp_asan_ubsan(tmp_path):
    """Every engine test case under AddressSanitizer + UndefinedBehaviorSanitizer;
    any report aborts the program (halt_on_error), so a clean exit means none."""
    exe = _build(tmp_path / "build", "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
                 "-DSHAREDBOX_SANITIZE=address;undefined")
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = "halt_on_error=1:detect_leaks=1"
    env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1"
    cmd = [str(exe), "--iterations=2000"]
    proc = _run_tests(cmd, timeout=600, env=env, cwd=tmp_path)
    assert "Sanitizer" not in proc.stdout, proc.stdout[-12000:]
    _check_output(proc)


FUZZ_CORPUS = ROOT / "tests" / "fuzz" / "corpus"
FUZZ_SUMMARY = re.compile(r"^fuzz_segment: (\d+) corpus inputs, (\d+) random inputs .* 0 crashes, "
                          r"0 hangs$", re.MULTILINE)


@pytest.mark.fuzz
@pytest.mark.sanitizer
@pytest.mark.slow  # it is its own ASan build: scripts/test-asan.sh need not build it again
def test_engine_fuzz_segment_asan_ubsan(tmp_path):
    """tests/fuzz/fuzz_segment.cpp under ASan+UBSan: every committed corpus
    input, then SBX_FUZZ_RUNS (default 3000) seeded random edit scripts, at
    most 30 s of them.  Any crash, sanitizer report, escaped exception,
    input past the watchdog or lock left held aborts the program."""
    exe = _build(tmp_path / "build", "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
                 "-DSHAREDBOX_SANITIZE=address;undefined", "-DSHAREDBOX_BUILD_FUZZ=ON",
                 target="sharedbox_fuzz_segment")
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = "halt_on_error=1:detect_leaks=1"
    env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1"
    runs = os.environ.get("SBX_FUZZ_RUNS", "3000")
    cmd = [str(exe), f"--runs={runs}", "--seconds=30", str(FUZZ_CORPUS)]
    proc = _run_tests(cmd, timeout=300, env=env, cwd=tmp_path)
    out = proc.stdout
    assert proc.returncode == 0 and "Sanitizer" not in out, out[-12000:]
    summary = FUZZ_SUMMARY.findall(out)
    assert len(summary) == 1, out[-12000:]
    corpus_inputs = len([p for p in FUZZ_CORPUS.iterdir() if not p.name.startswith(".")])
    assert int(summary[0][0]) == corpus_inputs > 0, out[-2000:]
    assert int(summary[0][1]) > 0, out[-2000:]
    print(out.strip().splitlines()[-1])
