"""The code in the user documentation runs, and its links point somewhere.

Every ```python block of docs/guide.md and docs/faq.md is a complete program:
each runs in its own interpreter and must exit 0, print nothing to stderr and
leave no segment behind in /dev/shm.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ["docs/guide.md", "docs/faq.md"]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(doc):
    text = (ROOT / doc).read_text()
    for match in BLOCK.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        yield pytest.param(doc, match.group(1), id=f"{doc}:{line}")


@pytest.mark.parametrize("doc, code", [p for doc in DOCS for p in python_blocks(doc)])
def test_python_block_runs(doc, code, tmp_path, request):
    if "numpy" in code:
        pytest.importorskip("numpy")
    env = dict(os.environ)
    if "RedisDict" in code:  # the guide's Redis examples read REDIS_URL
        env["REDIS_URL"] = request.getfixturevalue("redis_server").url
    script = tmp_path / "snippet.py"
    script.write_text(code)
    before = set(os.listdir("/dev/shm"))
    with subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=tmp_path, env=env,
    ) as proc:
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stdout + stderr
    assert stderr == ""
    # Snippets name their segments <word>_<pid> (temporary(): sbx_tmp_<pid>_<hex>);
    # only names with this snippet's PID count, since other test runs may be
    # creating segments at the same time.
    mine = re.compile(rf"_{proc.pid}(_|$)")
    left = {n for n in set(os.listdir("/dev/shm")) - before if mine.search(n)}
    assert not left, f"the snippet left {left} in /dev/shm"


def test_every_doc_has_python_blocks():
    for doc in DOCS:
        assert len(list(python_blocks(doc))) >= 2, doc


@pytest.mark.parametrize("doc", ["README.md", *DOCS])
def test_relative_links_resolve(doc):
    path = ROOT / doc
    text = path.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if dest.name == "benchmarks.md" and not dest.exists():
            continue  # written separately; linked ahead of time
        assert dest.exists(), f"{doc}: link to {target} goes nowhere"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest.read_text()), f"{doc}: no section #{anchor} in {file or doc}"


def anchors(markdown):
    """GitHub's anchor for each heading: lower case, punctuation dropped, spaces to '-'."""
    out = set()
    for heading in re.findall(r"^#+ (.+)$", markdown, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out
