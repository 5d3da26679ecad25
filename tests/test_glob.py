"""Tests for native/glob.c: Graphite glob matching of one path component.

native/glob.c is built into a throwaway cffi extension at test time and
compared against a Python reference of graphite-web 1.1.10's StandardFinder
semantics: brace expansion (first brace group without inner braces, split on
',', recursively, deduplicated) followed by fnmatch.fnmatchcase per variant.

Set TSM_GLOB_SANITIZE=1 (or TISMET_SANITIZE=1) to build it with
-fsanitize=address,undefined; python must then run with
LD_PRELOAD="$(gcc -print-file-name=libasan.so)" (plus libubsan.so) and
ASAN_OPTIONS=detect_leaks=0.
"""

import fnmatch
import functools
import importlib.util
import os
import pathlib
import re
import time

import pytest

cffi = pytest.importorskip("cffi")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
NATIVE = ROOT / "native"
SANITIZE = "1" in (os.environ.get("TSM_GLOB_SANITIZE"), os.environ.get("TISMET_SANITIZE"))

ENOMEM, ETOOMANY = -1, -2

CDEF = """
typedef struct tsm_glob tsm_glob;
int tsm_glob_compile(const char *pat, size_t len, tsm_glob **out);
void tsm_glob_free(tsm_glob *g);
int tsm_glob_match(const tsm_glob *g, const char *s, size_t len);
int tsm_glob_has_globstar(const tsm_glob *g);
int tsm_glob_is_literal(const tsm_glob *g);
size_t tsm_glob_nliterals(const tsm_glob *g);
const char *tsm_glob_literal(const tsm_glob *g, size_t i, size_t *len);
"""


@pytest.fixture(scope="session")
def native(tmp_path_factory):
    """Build native/glob.c into a private extension module and import it."""
    tmp = tmp_path_factory.mktemp("tsm_glob_build")
    flags = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2"]
    link = []
    if SANITIZE:
        san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g"]
        flags += san
        link += san
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    name = "_tsm_glob_test"
    ffi.set_source(
        name,
        '#include "glob.h"',
        sources=[str(NATIVE / "glob.c")],
        include_dirs=[str(NATIVE)],
        extra_compile_args=flags,
        extra_link_args=link,
    )
    path = ffi.compile(tmpdir=str(tmp))
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Glob:
    """Thin wrapper around a compiled tsm_glob."""

    def __init__(self, native, pat):
        self.ffi, self.lib = native.ffi, native.lib
        if isinstance(pat, str):
            pat = pat.encode("utf-8", "surrogateescape")
        out = self.ffi.new("tsm_glob **")
        self.rc = self.lib.tsm_glob_compile(pat, len(pat), out)
        self.g = self.ffi.gc(out[0], self.lib.tsm_glob_free) if self.rc == 0 else None

    def match(self, name):
        if isinstance(name, str):
            name = name.encode("utf-8", "surrogateescape")
        return self.lib.tsm_glob_match(self.g, name, len(name))

    def literals(self):
        n = self.lib.tsm_glob_nliterals(self.g)
        ln = self.ffi.new("size_t *")
        out = []
        for i in range(n):
            p = self.lib.tsm_glob_literal(self.g, i, ln)
            out.append(self.ffi.unpack(p, ln[0]))
        assert self.lib.tsm_glob_literal(self.g, n, ln) == self.ffi.NULL
        return out

    @property
    def globstar(self):
        return self.lib.tsm_glob_has_globstar(self.g)

    @property
    def is_literal(self):
        return self.lib.tsm_glob_is_literal(self.g)


# --------------------------------------------------------------------------
# Python reference: graphite-web 1.1.10 semantics (written independently).

_GROUP = re.compile(r"\{([^{}]*)\}")


@functools.lru_cache(maxsize=None)
def ref_expand(pat):
    """All brace variants of pat, as a frozenset."""
    m = _GROUP.search(pat)
    if m is None:
        return frozenset([pat])
    out = set()
    for alt in m.group(1).split(","):
        out |= ref_expand(pat[: m.start()] + alt + pat[m.end():])
    return frozenset(out)


def is_wild(v):
    return "[" in v or "*" in v or "?" in v


def ref_match(pat, name):
    return any(fnmatch.fnmatchcase(name, v) for v in ref_expand(pat) if v != "**")


def ref_classes(pat):
    vs = ref_expand(pat)
    lits = {v for v in vs if v != "**" and not is_wild(v)}
    wild = {v for v in vs if v != "**" and is_wild(v)}
    return "**" in vs, not wild, lits


def dec(b):
    return b.decode("utf-8", "surrogateescape")


def enc(s):
    return s.encode("utf-8", "surrogateescape")


# --------------------------------------------------------------------------
# Named cases

NAMED = [
    # (pattern, name, expected)
    ("abc", "abc", True),
    ("abc", "abd", False),
    ("", "", True),
    ("", "a", False),
    ("*", "", True),
    ("*", "anything.at.all", True),
    ("a*", "a", True),
    ("a*c", "abbbc", True),
    ("a*c", "abbbcd", False),
    ("?", "é", True),          # one code point, two bytes
    ("??", "é", False),
    ("é*", "éa", True),
    ("[é]", "é", True),
    ("[a-é]", "z", True),
    ("[!é]", "é", False),
    ("{a,b}", "a", True),
    ("{a,b}", "b", True),
    ("{a,b}", "{a,b}", False),
    ("x{}y", "xy", True),
    ("{}", "", True),
    ("{,a}", "", True),
    ("{a,{b,c}}", "c", True),
    ("{a{b,c}d}", "acd", True),
    ("{a{b,c}d}", "a", False),
    ("{a,b", "{a,b", True),     # unbalanced: literal
    ("a}", "a}", True),
    ("}{a,b}{", "}b{", True),
    ("{{a,b}", "{a", True),
    ("{{a,b}", "a", False),
    ("{a,b}{c,d}", "bd", True),
    ("[abc]", "b", True),
    ("[abc]", "d", False),
    ("[!abc]", "d", True),
    ("[!abc]", "a", False),
    ("[a-c]", "b", True),
    ("[z-a]", "z", False),      # reversed range matches nothing
    ("[z-a]", "m", False),
    ("[!z-a]", "m", True),      # negated empty set matches anything
    ("[az-ab]", "b", True),     # reversed range drops both endpoints only
    ("[az-ab]", "z", False),
    ("[a-c-e]", "-", True),     # '-' right after a range is a member
    ("[a-c-e]", "d", False),
    ("[a-c-e]", "e", True),
    ("[a-]", "-", True),
    ("[-a]", "-", True),
    ("[!-a]", "-", False),
    ("[a--]", "a", False),      # range 'a'..'-' is reversed
    ("[]]", "]", True),
    ("[]a]", "a", True),
    ("[!]]", "]", False),
    ("[!]]", "x", True),
    ("[!]", "[!]", True),       # unterminated: literal
    ("[", "[", True),
    ("a[b", "a[b", True),
    ("[*", "[x", True),         # literal '[' then a star
    ("a]b", "a]b", True),
    ("[\\]", "\\", True),       # no escaping
    ("\\*", "\\x", True),
    ("[[]", "[", True),
    ("[^a]", "^", True),        # '^' is not negation
    ("[^a]", "b", False),
    ("[&&a]", "&", True),
    ("**", "a", False),         # globstar is never matched here
    ("{**,a}", "a", True),
    ("{**,a}", "b", False),
    ("a**", "abc", True),
    ("***", "abc", True),
    ("{[a-b],c}", "b", True),
    ("[{a,b}]", "b", True),     # braces expand even inside a set: [a] [b]
    ("*\n*", "a\nb", True),
    ("?", "\n", True),
]


@pytest.mark.parametrize("pat,name,expected", NAMED)
def test_named_cases(native, pat, name, expected):
    assert ref_match(pat, name) == expected, "reference disagrees with table"
    g = Glob(native, pat)
    assert g.rc == 0
    assert g.match(name) == int(expected)


CLASSES = [
    # (pattern, globstar, is_literal, literals)
    ("**", 1, 1, set()),
    ("{**,a}", 1, 1, {b"a"}),
    ("{**,a*}", 1, 0, set()),
    ("a**", 0, 0, set()),
    ("***", 0, 0, set()),
    ("abc", 0, 1, {b"abc"}),
    ("{a,b}", 0, 1, {b"a", b"b"}),
    ("{a,a,a}", 0, 1, {b"a"}),
    ("{a,b*}", 0, 0, {b"a"}),
    ("a]b", 0, 1, {b"a]b"}),
    ("a[b", 0, 0, set()),
    ("{}", 0, 1, {b""}),
    ("x{,}y", 0, 1, {b"xy"}),
    ("{a,b", 0, 1, {b"{a,b"}),
    ("é{1,2}", 0, 1, {"é1".encode(), "é2".encode()}),
]


@pytest.mark.parametrize("pat,globstar,is_literal,lits", CLASSES)
def test_classification(native, pat, globstar, is_literal, lits):
    rg, rl, rlits = ref_classes(pat)
    assert (int(rg), int(rl), {enc(s) for s in rlits}) == (globstar, is_literal, lits)
    g = Glob(native, pat)
    assert g.rc == 0
    assert g.globstar == globstar
    assert g.is_literal == is_literal
    got = g.literals()
    assert len(got) == len(set(got))
    assert set(got) == lits


def test_not_nul_terminated(native):
    ffi, lib = native.ffi, native.lib
    pat = ffi.new("char[]", b"a*")          # compile only the "a"
    out = ffi.new("tsm_glob **")
    assert lib.tsm_glob_compile(pat, 1, out) == 0
    g = ffi.gc(out[0], lib.tsm_glob_free)
    assert lib.tsm_glob_is_literal(g) == 1
    name = ffi.new("char[]", b"abc")
    assert lib.tsm_glob_match(g, name, 1) == 1
    assert lib.tsm_glob_match(g, name, 2) == 0
    assert lib.tsm_glob_match(g, ffi.NULL, 0) == 0
    # a multi-byte character cut by the length is not read past the end
    g2 = Glob(native, "?")
    e = ffi.new("char[]", "é".encode())
    assert lib.tsm_glob_match(g2.g, e, 1) == 1   # lone lead byte: one code point
    assert lib.tsm_glob_match(g2.g, e, 2) == 1


BYTE_CASES = [
    # invalid UTF-8 decodes byte by byte to U+DC80..U+DCFF (surrogateescape),
    # so a stray byte never equals a real character
    (b"[a-\xc3\xa9]", b"\xc3", False),   # U+DCC3 is not in a..U+00E9
    (b"[a-\xc3\xa9]", b"\xc3\xa9", True),
    (b"\xc3\xa9*", b"\xe9x", False),
    (b"[\xc3\xa9]", b"\xe9", False),
    (b"[!a]", b"\xff", True),
    (b"?", b"\xed\xb2\x80", False),      # encoded surrogate: three bytes
    (b"???", b"\xed\xb2\x80", True),
    (b"??", b"\xf0\x9f", True),           # truncated sequence
    (b"?", b"\xf0\x9f\x98\x80", True),   # one astral code point
    (b"[\xff]", b"\xff", True),
    (b"\xc0\x80*", b"\xc0\x80", True),   # overlong: two stray bytes
    (b"?", b"\xc0\x80", False),
    (b"?", b"\xe0\x80\xaf", False),      # overlong 3-byte '/'
    (b"?", b"\xf4\x90\x80\x80", False),  # above U+10FFFF
    (b"????", b"\xf4\x90\x80\x80", True),
]


@pytest.mark.parametrize("pat,name,expected", BYTE_CASES)
def test_invalid_utf8_cases(native, pat, name, expected):
    assert ref_match(dec(pat), dec(name)) == expected, "reference disagrees"
    g = Glob(native, pat)
    assert g.rc == 0
    assert g.match(name) == int(expected)


def test_brace_limits(native):
    g = Glob(native, "{a,b}" * 12)               # exactly 4096 variants
    assert g.rc == 0 and g.is_literal and len(g.literals()) == 4096
    assert g.match("ab" * 6) and not g.match("abc")
    assert Glob(native, "{a,b}" * 13).rc == ETOOMANY
    assert Glob(native, "{" + ",".join(str(i) for i in range(5000)) + "}").rc == ETOOMANY
    g = Glob(native, "{a,a}" * 60)               # huge tree, one distinct result
    assert g.rc == 0 and g.literals() == [b"a" * 60]
    t = time.perf_counter()
    for pat in ["{" * 5000 + "a" + "}" * 5000,   # deep nesting
                "{a," * 3000 + "}" * 3000,
                "{" * 20000 + "}" * 20000,
                "{,}" * 3000]:
        assert Glob(native, pat).rc in (0, ETOOMANY)
    assert time.perf_counter() - t < (20 if SANITIZE else 2)


def _fast(native, pat, name, budget):
    g = Glob(native, pat)
    assert g.rc == 0
    t = time.perf_counter()
    got = g.match(name)
    dt = time.perf_counter() - t
    assert dt < budget * (20 if SANITIZE else 1), (pat[:40], dt)
    return got


def test_pathological_timing(native):
    name = "a" * 10240
    assert _fast(native, "*a*a*a*a*a*b", name, 0.05) == 0
    assert _fast(native, "*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*", name, 0.05) == 1
    assert _fast(native, "*" + "a" * 200 + "b", name, 0.05) == 0
    assert _fast(native, "*" + "?" * 100 + "*b", name, 0.05) == 0
    assert _fast(native, "{*a,*a*}*a*a*a*a*" + "[ab]" * 20 + "c", name, 0.05) == 0
    assert _fast(native, "*é*é*é*é*x", "é" * 5120, 0.05) == 0
    assert _fast(native, "*a*a*a*b", "\xff" * 10240, 0.05) == 0


# --------------------------------------------------------------------------
# Randomised comparison against the reference

ALPHA = "ab{},*?[]!-é"
pat_st = st.text(alphabet=ALPHA, max_size=12)
name_st = st.text(alphabet="ab{},*?[]!-éz", max_size=8)


def _candidates(pat, rnd_names):
    """Random names plus names built from the pattern's variants, so that a
    good share of the comparisons are matches."""
    names = set(rnd_names)
    names.add(pat)
    for v in sorted(ref_expand(pat))[:8]:
        names.add(v)
        names.add(v.replace("*", "").replace("?", "a"))
        names.add(v.replace("*", "ba").replace("?", "é"))
        names.add(re.sub(r"\[!?\]?[^\]]*\]", "b", v))
    return names


@settings(max_examples=2500, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(pat=pat_st, names=st.lists(name_st, max_size=6))
def test_random_against_reference(native, pat, names):
    g = Glob(native, pat)
    assert g.rc == 0
    rg, rl, rlits = ref_classes(pat)
    assert g.globstar == int(rg)
    assert g.is_literal == int(rl)
    assert sorted(g.literals()) == sorted(enc(s) for s in rlits)
    for name in _candidates(pat, names):
        assert g.match(name) == int(ref_match(pat, name)), (pat, name)


BYTE_ALPHA = [b"a", b"b", b"*", b"?", b"[", b"]", b"!", b"-", b"{", b"}", b",",
              b"\xc3", b"\xa9", b"\xc3\xa9", b"\xff", b"\xed\xb2\x80", b"\xf0\x9f",
              b"\xe2\x82\xac", b"\xc0\x80", b"\xf4\x90\x80\x80", b"\xe9",
              b"\xc2"]
bytes_st = st.lists(st.sampled_from(BYTE_ALPHA), max_size=8).map(b"".join)


@settings(max_examples=1500, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(pat=bytes_st, names=st.lists(bytes_st, max_size=6))
def test_random_bytes_against_reference(native, pat, names):
    """Invalid UTF-8 decodes byte by byte like Python's surrogateescape."""
    g = Glob(native, pat)
    assert g.rc == 0
    for name in set(names) | {pat}:
        assert g.match(name) == int(ref_match(dec(pat), dec(name))), (pat, name)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(pat=st.text(alphabet="ab*?{},[]", min_size=20, max_size=60),
       name=st.text(alphabet="ab", min_size=200, max_size=400))
def test_random_long(native, pat, name):
    g = Glob(native, pat)
    if g.rc == ETOOMANY:
        return
    assert g.rc == 0
    if len(ref_expand(pat)) <= 64:
        assert g.match(name) == int(ref_match(pat, name)), (pat, name)
