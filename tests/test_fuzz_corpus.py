"""Every fuzz input ever kept, replayed through the fuzz harnesses.

tests/fuzz/ holds libFuzzer harnesses for the page decoder, the glob
parser, names and tag queries, log replay, the catalog and the page file
(tests/fuzz/README.md); `tox -e fuzz` runs them with clang's libFuzzer.
This test needs only gcc (or $CC): it builds each harness with a plain
main() (tests/fuzz/replay.c) under AddressSanitizer and UBSan and runs the
seed corpus (tests/fuzz/corpus/<target>/) and every input that once
crashed the engine (tests/fuzz/crashes/<target>/) through it once. A
memory error, undefined behaviour, a leak, an undocumented return code, a
TSM_ECORRUPT without file and offset, or a broken round trip fails it.
"""
import os
import shutil
import subprocess
import sys

import pytest

from tismet_testutil import TESTS

ROOT = TESTS.parent
sys.path.insert(0, str(ROOT / "tools"))
import fuzz  # noqa: E402

CC = os.environ.get("CC", "gcc")


def _asan_works(tmp):
    """The toolchain links AddressSanitizer programs (libasan installed)."""
    src = tmp / "t.c"
    src.write_text("int main(void) { return 0; }\n")
    r = subprocess.run([CC, "-fsanitize=address,undefined", str(src), "-o", str(tmp / "t")],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return r.returncode == 0


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    if not shutil.which(CC):
        pytest.skip("no C compiler (%s)" % CC)
    tmp = tmp_path_factory.mktemp("fuzz_replay")
    sanitize = _asan_works(tmp)
    # the harnesses' databases go under FUZZ_TMPDIR (else /dev/shm): here, to see
    # that they clean up after themselves
    dbs = tmp / "databases"
    dbs.mkdir()
    old = os.environ.get("FUZZ_TMPDIR")
    os.environ["FUZZ_TMPDIR"] = str(dbs)
    try:
        results = fuzz.replay(list(fuzz.TARGETS), str(tmp / "build"), sanitize=sanitize, cc=CC)
    finally:
        if old is None:
            del os.environ["FUZZ_TMPDIR"]
        else:
            os.environ["FUZZ_TMPDIR"] = old
    results["left behind"] = sorted(os.listdir(dbs))
    return results


def test_harnesses_leave_no_database_behind(replayed):
    assert replayed["left behind"] == []


@pytest.mark.timeout(300)
@pytest.mark.parametrize("target", list(fuzz.TARGETS))
def test_corpus_and_crashes_replay_clean(replayed, target):
    rc, count, out = replayed[target]
    assert rc == 0, "harness %s failed (exit %d):\n%s" % (target, rc, out[-6000:])
    kept = sum(len(os.listdir(d)) for d in fuzz.inputs_of(target))
    assert count == kept >= 3, (count, kept)
