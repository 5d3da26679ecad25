"""`Database.find` against an independent reference of graphite-web 1.1.10 StandardFinder.

The reference builds a real directory tree of empty `.wsp` files for the same names (one
directory level per dot-separated component; a metric `a.b` is the file `a/b.wsp`) and walks
it the way StandardFinder does:

* the pattern is split on dots; each component is matched against the entries of the
  current directory with fnmatch (case-sensitive on POSIX), after `{a,b}` brace expansion;
* a component without any of `{[*?` is looked up literally (no listing);
* a non-final component only descends into directories (branches);
* the final component yields files (leaves, `x.wsp` matched as `pattern + '.*'`) and
  directories (branches) alike, so a path that is both `x.wsp` and `x/` is yielded twice,
  as (x, True) and (x, False);
* a component that is exactly `**` stands for the current directory and every directory
  below it (zero or more levels); a final `**` is followed by an implicit `*`, so `a.**`
  yields everything below `a` but not `a` itself.

Results are compared as sets of (name, is_leaf). Tagged names (`name;tag=value...`) are not
in the tree: they are found only by a pattern equal to the name.

TISMET_SOAK=1 raises the number of examples (see conftest.py).
"""

import fnmatch
import os
import shutil
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tismet
from tismet_testutil import SOAK

ARCH = [(60, 5)]


# --------------------------------------------------------------------------- reference

def expand_braces(s):
    """All variants of s with each {a,b,...} group (nesting allowed) replaced by one option."""
    start = s.find("{")
    if start < 0:
        return [s]
    depth = 0
    for end in range(start, len(s)):
        if s[end] == "{":
            depth += 1
        elif s[end] == "}":
            depth -= 1
            if depth == 0:
                break
    else:
        return [s]  # unbalanced: literal
    options, depth, cur = [], 0, ""
    for c in s[start + 1:end]:
        if c == "," and depth == 0:
            options.append(cur)
            cur = ""
            continue
        depth += (c == "{") - (c == "}")
        cur += c
    options.append(cur)
    out = []
    for opt in options:
        out.extend(expand_braces(s[:start] + opt + s[end + 1:]))
    return out


def match_entries(entries, pattern):
    found = []
    for variant in expand_braces(pattern):
        found.extend(e for e in entries if fnmatch.fnmatch(e, variant))
    return list(dict.fromkeys(found))


def has_wildcard(component):
    return any(c in component for c in "{[*?")


def reference_find(root, pattern):
    results = set()

    def to_name(path):
        rel = os.path.relpath(path, root)
        return rel.replace(os.sep, ".")

    def walk(current, parts):
        part, rest = parts[0], parts[1:]
        wild = has_wildcard(part)
        files, subdirs, matching_subdirs = [], [], []
        if wild:
            for entry in os.scandir(current):
                (subdirs if entry.is_dir() else files).append(entry.name)
            if part == "**":
                matching_subdirs = [d for d, _, _ in os.walk(current)]
                if not rest:
                    rest = ["*"]
            else:
                matching_subdirs = match_entries(subdirs, part)
        elif os.path.isdir(os.path.join(current, part)):
            matching_subdirs = [part]
        if rest:
            for sub in matching_subdirs:
                walk(os.path.join(current, sub), rest)
            return
        if not wild:
            files = [part + ".wsp"] if os.path.isfile(os.path.join(current, part + ".wsp")) \
                else []
        for f in match_entries(files, part + ".*"):
            results.add((to_name(os.path.join(current, f))[:-len(".wsp")], True))
        for sub in matching_subdirs:
            results.add((to_name(os.path.join(current, sub)), False))

    walk(root, pattern.split("."))
    return results


def build_tree(root, names):
    for name in names:
        parts = name.split(".")
        d = os.path.join(root, *parts[:-1])
        os.makedirs(d, exist_ok=True)
        open(os.path.join(d, parts[-1] + ".wsp"), "w").close()


def engine_find(db, pattern):
    got = list(db.find(pattern))
    for name, is_leaf in got:
        assert isinstance(name, str) and isinstance(is_leaf, bool), (name, is_leaf)
    return set(got)


@pytest.fixture(scope="module")
def shared_db(tmp_path_factory):
    """One database for all generated examples: each example creates its names, checks,
    then deletes them all again (so delete must also clean the name index)."""
    d = tismet.Database(str(tmp_path_factory.mktemp("find") / "db"), durability="none")
    yield d
    d.close()


def check(db, names, patterns):
    leftovers = engine_find(db, "**")
    assert leftovers == set(), "names left in the index after delete: %r" % sorted(leftovers)
    tmp = tempfile.mkdtemp(prefix="tsmfind")
    try:
        root = os.path.join(tmp, "tree")
        os.mkdir(root)
        build_tree(root, names)
        for n in names:
            db.create(n, ARCH)
        for p in patterns:
            want = reference_find(root, p)
            got = engine_find(db, p)
            assert got == want, "pattern %r: engine-only %r, reference-only %r" % (
                p, sorted(got - want), sorted(want - got))
    finally:
        shutil.rmtree(tmp)
        for n in names:
            if db.exists(n):
                db.delete(n)


# --------------------------------------------------------------------------- reference sanity

def test_reference_semantics(tmp_path):
    """The reference itself, on a hand-checked tree."""
    build_tree(str(tmp_path), ["a", "a.b", "a.b.c", "x.y"])
    r = lambda p: reference_find(str(tmp_path), p)  # noqa: E731
    assert r("a") == {("a", True), ("a", False)}
    assert r("*") == {("a", True), ("a", False), ("x", False)}
    assert r("a.**") == {("a.b", True), ("a.b", False), ("a.b.c", True)}
    assert r("**") == {("a", True), ("a", False), ("x", False), ("a.b", True),
                       ("a.b", False), ("a.b.c", True), ("x.y", True)}
    assert r("**.c") == {("a.b.c", True)}
    assert r("a.**.c") == {("a.b.c", True)}
    assert r("a.**.b") == {("a.b", True), ("a.b", False)}
    assert r("{a,x}.?") == {("a.b", True), ("a.b", False), ("x.y", True)}
    assert r("[!a]") == {("x", False)}
    assert expand_braces("x{a,b}y{c,}") == ["xayc", "xay", "xbyc", "xby"]


# --------------------------------------------------------------------------- properties

COMPONENTS = ["a", "b", "c", "ab", "ba", "abc", "x1", "x2", "a-b", "a_b", "Z",
              "\u00e9", "\u00e9a", "caf\u00e9", "\u65e5\u672c", "wsp"]
NAMES = st.lists(st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=4)
                 .map(".".join), min_size=1, max_size=14, unique=True)
GLOBS = ["*", "?", "??", "a*", "*b", "?b", "a?", "*a*", "[ab]", "[!a]", "[a-c]*", "[!a-b]*",
         "{a,b}", "{ab,x*}", "{a,\u00e9}", "*{a,b}", "{b,c}?", "caf?", "caf[\u00e9e]",
         "\u00e9?", "?\u65e5*", "x[0-9]", "**", "**", "a{,b}", "{a}", "wsp", "*-*", "[Z]"]


@st.composite
def patterns(draw, names):
    comps = sorted({c for n in names for c in n.split(".")})
    depth = draw(st.integers(1, 4))
    parts = [draw(st.one_of(st.sampled_from(GLOBS), st.sampled_from(comps)))
             for _ in range(depth)]
    return ".".join(parts)


@settings(max_examples=4000 if SOAK else 800)
@given(st.data())
def test_find_matches_standard_finder(shared_db, data):
    names = data.draw(NAMES, label="names")
    pats = data.draw(st.lists(patterns(names), min_size=1, max_size=12), label="patterns")
    pats += [names[0], names[-1]]                       # exact names
    pats += [n.rsplit(".", 1)[0] for n in names if "." in n][:2]   # exact branches
    check(shared_db, names, pats)


# --------------------------------------------------------------------------- named cases

TREE = ["servers.web01.cpu.user", "servers.web01.cpu.system", "servers.web02.cpu.user",
        "servers.db1.disk.sda.reads", "servers.db1.disk", "servers.db1", "servers",
        "collectd.caf\u00e9.load", "collectd.cafe.load", "collectd.caf\u00e9s.load",
        "stats.counters.a.count", "stats.counters.b.count", "stats.timers.a.p95",
        "a.b.c.d.e", "a.x.c", "a.c"]

NAMED = {
    "leading wildcard": "*.web01.cpu.*",
    "leading star only": "*",
    "leading question": "?ervers.*",
    "brace set": "servers.{web01,db1}.*",
    "brace set with glob": "servers.{web*,db?}",
    "brace set in middle of component": "stats.counters.{a,b}.co{unt,x}",
    "brace set no match": "servers.{x,y}",
    "character class": "servers.web0[12].cpu.user",
    "negated class": "servers.web0[!1].*.*",
    "class range": "stats.counters.[a-b].count",
    "globstar in middle": "servers.**.user",
    "globstar in middle zero levels": "servers.**.web01",
    "globstar at end": "servers.db1.**",
    "globstar alone": "**",
    "globstar first": "**.count",
    "globstar twice": "a.**.c.**",
    "globstar then star": "a.**.*",
    "non-ascii with question mark": "collectd.caf?.load",
    "non-ascii two question marks": "collectd.caf??.*",
    "non-ascii literal": "collectd.caf\u00e9",
    "non-ascii class": "collectd.caf[\u00e9].load",
    "leaf and branch": "servers.db1",
    "leaf and branch wildcard": "servers.db?",
    "root leaf and branch": "servers",
    "leaf and branch via globstar": "**.disk",
    "too deep": "servers.web01.cpu.user.x",
    "no match": "nothing.here",
}


@pytest.mark.parametrize("pattern", list(NAMED.values()), ids=list(NAMED))
def test_named_patterns(shared_db, pattern):
    check(shared_db, TREE, [pattern])


def test_named_expectations(db):
    """A few results spelled out by hand (not only via the reference)."""
    for n in TREE:
        db.create(n, ARCH)
    assert engine_find(db, "servers.db1") == {("servers.db1", True), ("servers.db1", False)}
    assert engine_find(db, "collectd.caf?.load") == {("collectd.caf\u00e9.load", True),
                                                     ("collectd.cafe.load", True)}
    assert engine_find(db, "servers.**.user") == {("servers.web01.cpu.user", True),
                                                  ("servers.web02.cpu.user", True)}
    assert engine_find(db, "a.**") == {("a.b", False), ("a.b.c", False), ("a.b.c.d", False),
                                       ("a.b.c.d.e", True), ("a.x", False), ("a.x.c", True),
                                       ("a.c", True)}
    assert engine_find(db, "servers.{web02,db1}.*") == {
        ("servers.web02.cpu", False), ("servers.db1.disk", False),
        ("servers.db1.disk", True)}


def test_tagged_names_only_by_exact_pattern(db):
    tagged = ["cpu.load;dc=x;host=a", "cpu.load;dc=y;host=a", "mem;host=b"]
    plain = ["cpu.load", "cpu.idle"]
    for n in tagged + plain:
        db.create(n, ARCH)
    assert engine_find(db, "cpu.*") == {("cpu.load", True), ("cpu.idle", True)}
    assert engine_find(db, "**") == {("cpu", False), ("cpu.load", True), ("cpu.idle", True)}
    assert engine_find(db, "*") == {("cpu", False)}
    assert engine_find(db, "cpu.load") == {("cpu.load", True)}
    for n in tagged:
        assert engine_find(db, n) == {(n, True)}
    for p in ["cpu.load;dc=x;host=*", "cpu.load;*", "cpu.load;dc=?;host=a", "mem;host=*",
              "mem*", "cpu.load;dc=z;host=a", "*;dc=x;host=a", "cpu.load;dc=x"]:
        assert engine_find(db, p) == set(), p
    db.delete("cpu.load;dc=x;host=a")
    assert engine_find(db, "cpu.load;dc=x;host=a") == set()
    assert engine_find(db, "cpu.load;dc=y;host=a") == {("cpu.load;dc=y;host=a", True)}


def test_find_follows_create_and_delete(db):
    db.create("p.q.r", ARCH)
    db.create("p.s", ARCH)
    assert engine_find(db, "p.*") == {("p.q", False), ("p.s", True)}
    db.delete("p.q.r")
    # no metric is left under p.q: it is no longer a branch
    assert engine_find(db, "p.*") == {("p.s", True)}
    assert engine_find(db, "**") == {("p", False), ("p.s", True)}
    db.delete("p.s")
    assert engine_find(db, "**") == set()
    db.create("p", ARCH)
    assert engine_find(db, "*") == {("p", True)}


# --------------------------------------------------------------------------- a wide tree

# Patterns that start with wildcards may be answered from a literal component's postings
# instead of top down (index.c, "pivot"); that happens only when the top-down walk would
# visit about twice as many nodes as the literal has postings, so it needs a tree wider than
# the ones above: 2 data centres x 150 hosts x a few plugins, with components that also
# occur at other depths, leaf-and-branch nodes and rare literals.

def wide_names():
    names = []
    for dc in ("dc1", "dc2"):
        for h in range(150):
            host = "%s.h%03d" % (dc, h)
            names += [host + ".cpu.0.user", host + ".cpu.0.idle", host + ".cpu.1.user",
                      host + ".mem.used", host + ".mem.free"]
    names += ["dc2.h077.disk.sda.reads", "dc1.h010.disk.sdb.reads", "dc1.h005.cpu",
              "dc1.user", "user", "dc2.h001.user", "dc1.h002.cpu.0.user.x", "reads.cpu"]
    return names


WIDE_PATTERNS = [
    "*.*.cpu.0.user", "*.*.disk.*.reads", "**.reads", "**.user", "**.cpu.*", "**.cpu",
    "*.h0[0-4]?.cpu.{0,1}.user", "**.disk.**", "*.*.{disk,mem}.*", "**.**.sda.*", "*.*.cpu",
    "*.h01*.mem.used", "*.user", "**.h005.cpu", "*.*.cpu.*.user.*", "*.*.*.*.reads",
    "*.*.nothing.*", "**.nothing", "*.{h001,h002}.*", "?c?.*.mem.{used,free,gone}",
    "*.*.cpu.0.{user,idle}", "**.0.user", "**.**.user", "*.*.cpu.**", "**.cpu.**.user",
    "dc1.*.cpu.0.user", "*.h150.cpu.0.user", "*.*.disk.sd[a-z].reads", "reads.*", "**.sda",
]

WIDE_GLOBS = ["*", "**", "h00?", "h1*", "[!h]*", "{cpu,mem}", "{0,1}", "*u*", "?"]


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    base = tmp_path_factory.mktemp("wide")
    root = str(base / "tree")
    names = wide_names()
    build_tree(root, names)
    db = tismet.Database(str(base / "db"), durability="none")
    for n in names:
        db.create(n, ARCH)
    yield db, root, names
    db.close()


@pytest.mark.parametrize("pattern", WIDE_PATTERNS)
def test_wide_tree_patterns(wide, pattern):
    db, root, _ = wide
    assert engine_find(db, pattern) == reference_find(root, pattern), pattern


@settings(max_examples=1000 if SOAK else 150, deadline=None)
@given(st.data())
def test_wide_tree_generated_patterns(wide, data):
    db, root, names = wide
    comps = sorted({c for n in names for c in n.split(".")} - {"h%03d" % i for i in range(150)})
    comps += ["h000", "h077", "h149"]
    depth = data.draw(st.integers(1, 6), label="depth")
    parts = [data.draw(st.one_of(st.sampled_from(WIDE_GLOBS), st.sampled_from(comps)))
             for _ in range(depth)]
    pattern = ".".join(parts)
    assert engine_find(db, pattern) == reference_find(root, pattern), pattern


def test_wide_tree_after_deletes(tmp_path):
    """Postings follow deletes and re-creates (nodes are reused from a free list)."""
    names = wide_names()
    db = tismet.Database(str(tmp_path / "db"), durability="none")
    for n in names:
        db.create(n, ARCH)
    gone = names[::3]
    for n in gone:
        db.delete(n)
    kept = [n for n in names if n not in set(gone)]
    again = ["dc3.h%03d.cpu.0.user" % i for i in range(100)] + gone[:50]
    for n in again:
        db.create(n, ARCH)
    root = str(tmp_path / "tree")
    build_tree(root, kept + again)
    for pattern in WIDE_PATTERNS + ["dc3.*.cpu.0.user", "*.*.cpu.0.*"]:
        assert engine_find(db, pattern) == reference_find(root, pattern), pattern
    db.close()
    # and after a reopen (the index rebuilt from the catalog)
    with tismet.Database(str(tmp_path / "db"), readonly=True) as ro:
        for pattern in WIDE_PATTERNS:
            assert engine_find(ro, pattern) == reference_find(root, pattern), pattern


def test_families_crossing_the_scan_threshold(db):
    """Families of up to 8 children are scanned, larger ones hashed (index.c): children
    must stay findable while a family grows past that size and shrinks below it."""
    alive = set()

    def check_all():
        for i in range(20):
            name = "f.c%02d" % i
            assert db.exists(name) == (name in alive), name
            assert engine_find(db, name) == ({(name, True)} if name in alive else set())
        assert engine_find(db, "f.*") == {(n, True) for n in alive}
        assert engine_find(db, "*.c0[0-9]") == {(n, True) for n in alive if n < "f.c10"}

    for i in range(12):
        db.create("f.c%02d" % i, ARCH)
        alive.add("f.c%02d" % i)
        check_all()
    for i in range(10):
        db.delete("f.c%02d" % i)
        alive.discard("f.c%02d" % i)
        check_all()
    for i in range(20):
        if "f.c%02d" % i not in alive:
            db.create("f.c%02d" % i, ARCH)
            alive.add("f.c%02d" % i)
            check_all()


def test_names_spelled_from_shared_prefixes(tmp_path):
    """Hits reuse the prefix they share with the previous hit's name (index.c, speller):
    names of every depth, deeper than the speller keeps (64 components), interleaved in
    creation order, branches that are also leaves, and a pattern that restarts from its
    pivot must all come out spelled exactly."""
    names = []
    deep = ".".join("d%d" % i for i in range(70))
    for h in range(30):
        names += ["a.h%02d.cpu.%d.x" % (h, c) for c in range(3)]
        names += ["a.h%02d.x" % h, "a.h%02d" % h, "b.h%02d.mem.x" % h]
        names.append(deep + ".h%02d.x" % h)
        names.append(deep[:40] + ".x")
    names = list(dict.fromkeys(names))
    with tismet.Database(str(tmp_path / "db")) as db:
        for n in names:
            db.create(n, [(60, 10)])
        every = {n for n, leaf in db.find("**") if leaf}
        assert every == set(names)
        xs = sorted(n for n, leaf in db.find("**.x") if leaf)
        assert xs == sorted(n for n in names if n.endswith(".x"))
        assert sorted(n for n, _ in db.find("*.*.cpu.*.x")) == \
            sorted(n for n in names if n.startswith("a.") and ".cpu." in n)
        # each a.hNN is a leaf and a branch: yielded once as each
        assert sorted(db.find("a.*")) == sorted(
            [("a.h%02d" % h, True) for h in range(30)] + [("a.h%02d" % h, False) for h in range(30)])
