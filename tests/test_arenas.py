"""tismet.keep_arenas: the interpreter's empty arenas are kept for reuse, within the limit.

Each case runs in a fresh interpreter (the setting is process-wide). A round makes and drops
two million floats (~48 MiB of arenas); page faults are counted with getrusage.
"""

import json
import os
import subprocess
import sys

import pytest

import tismet
from tismet_testutil import subprocess_env

ROUNDS = r"""
import json, resource, sys
import tismet
limit = int(sys.argv[1])
prev = [tismet.keep_arenas(limit)] if limit else [0]

def faults_of_a_round():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    values = [float(i) + 0.5 for i in range(2_000_000)]
    del values
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

first = faults_of_a_round()
again = [faults_of_a_round() for _ in range(3)]
prev.append(tismet.keep_arenas(0))
print(json.dumps({"first": first, "again": again, "prev": prev}))
"""


def run(limit):
    out = subprocess.run([sys.executable, "-c", ROUNDS, str(limit)], env=subprocess_env(),
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(bool(os.environ.get("TISMET_SANITIZE")),
                    reason="AddressSanitizer's allocator faults its own memory in")
def test_kept_arenas_are_reused_without_faults():
    plain, kept = run(0), run(128)
    # without keeping, every round faults its ~48 MiB in again (4 KiB pages: ~12k faults)
    assert min(plain["again"]) > 5000, plain
    # kept: the first round pays, the later ones reuse the same memory (the second
    # may still fault the list's own 16 MiB in: glibc moves it off mmap after one free)
    assert kept["first"] > 5000, kept
    assert max(kept["again"][1:]) < 1000, kept
    assert kept["prev"] == [0, 128]


def test_the_limit_bounds_what_is_kept():
    small = run(8)
    # 8 MiB kept of ~48 MiB: most of each round still faults
    assert min(small["again"]) > 5000, small


@pytest.mark.parametrize("bad", [-1, 65537, 1.5, "64", True, None])
def test_bad_limits_are_refused(bad):
    with pytest.raises(tismet.InvalidArgument):
        tismet.keep_arenas(bad)
