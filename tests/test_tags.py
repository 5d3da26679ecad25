"""The engine's tag index against a reference model of graphite-web's tag database.

The model below restates, series by series, what graphite-web 1.1.10's
LocalDatabaseTagDB computes with SQL: an expression that cannot match the
empty value needs the tag to be present with a matching value (regular
expressions through SQL REGEXP, i.e. re.search); the others filter with
re.match over the value, a missing tag counting as ''.  Random series sets and
random expressions must give the same sorted answer from the engine, in the
writer and in a reader process's handle, also after deletes.
"""
import re

import pytest
from hypothesis import given, settings, strategies as st

import tismet

TAGS = ["dc", "host", "role", "name2"]
VALUES = ["a", "b", "ab", "ba", "x.y", "a-1"]
METRICS = ["cpu", "cpu.load", "mem", "~tilde", "disk.io"]


def parse(path):
    metric, *segments = path.split(";")
    tags = {}
    for seg in segments:
        k, v = seg.split("=", 1)
        tags[k] = v
    tags["name"] = metric.lstrip("~")
    return tags


def normalize(metric, tags):
    return metric + "".join(sorted(";%s=%s" % kv for kv in tags.items()))


def reference(paths, exprs):
    """LocalDatabaseTagDB._find_series, restated over a list of paths."""
    required, filters = [], []
    for expr in exprs:
        tag, op, spec = re.match(r"^([^;!=]+)(!?=~?)([^;]*)$", expr).groups()
        if op in ("=~", "!=~") and not spec.startswith("^"):
            spec = "^(" + spec + ")"
        if op == "=":
            empty = spec == ""
        elif op == "!=":
            empty = spec != ""
        elif op == "=~":
            empty = bool(re.match(spec, ""))
        else:
            empty = not re.match(spec, "")
        (filters if empty else required).append((tag, op, spec))
    if not required:
        raise ValueError("all match empty")
    out = []
    for path in paths:
        tags = parse(path)
        ok = True
        for tag, op, spec in required:
            if tag not in tags:
                ok = False
            elif op == "=":
                ok = ok and tags[tag] == spec
            elif op == "!=":
                ok = ok and tags[tag] != spec
            elif op == "=~":
                ok = ok and re.search(spec, tags[tag]) is not None
            else:
                ok = ok and re.search(spec, tags[tag]) is None
        for tag, op, spec in filters:
            value = tags.get(tag, "")
            if ((op == "=" and value != spec) or (op == "=~" and re.match(spec, value) is None)
                    or (op == "!=" and value == spec)
                    or (op == "!=~" and re.match(spec, value) is not None)):
                ok = False
        if ok:
            out.append(path)
    return sorted(out)


series_st = st.lists(
    st.tuples(st.sampled_from(METRICS),
              st.dictionaries(st.sampled_from(TAGS), st.sampled_from(VALUES), min_size=1,
                              max_size=3)),
    min_size=1, max_size=25)

spec_st = st.one_of(st.sampled_from(VALUES + [""]),
                    st.sampled_from(["a.*", "b", "a|b", ".*", "^a", "x\\.", "^(b|c)$", "c?"]))
expr_st = st.builds(lambda t, op, s: "%s%s%s" % (t, op, s),
                    st.sampled_from(TAGS + ["name", "absent"]),
                    st.sampled_from(["=", "!=", "=~", "!=~"]), spec_st)


@settings(deadline=None)
@given(series=series_st, exprs=st.lists(expr_st, min_size=1, max_size=3), data=st.data())
def test_find_tagged_matches_graphite_semantics(tmp_path_factory, series, exprs, data):
    path = tmp_path_factory.mktemp("tags")
    names = sorted({normalize(m, tags) for m, tags in series})
    with tismet.Database(str(path), durability="none") as db:
        for name in names:
            db.create(name, [(60, 10)])
        # delete some, so removal from the index is exercised too
        gone = data.draw(st.lists(st.sampled_from(names), max_size=3, unique=True))
        for name in gone:
            db.delete(name)
        live = [n for n in names if n not in gone]
        try:
            expected = reference(live, exprs)
        except ValueError:
            with pytest.raises(ValueError):
                db.find_tagged(exprs)
            return
        assert db.find_tagged(exprs) == expected
        with tismet.Database(str(path), readonly=True) as reader:
            assert reader.find_tagged(exprs) == expected


def test_names_and_values_with_counts(tmp_path):
    with tismet.Database(str(tmp_path)) as db:
        for n in ["cpu;dc=x;host=a", "cpu;dc=y;host=a", "mem;host=b", "plain.metric",
                  "~sys.cpu;host=a"]:
            db.create(n, [(60, 10)])
        assert db.tag_names() == ["dc", "host", "name"]
        assert db.tag_values("host") == [("a", 3), ("b", 1)]
        assert db.tag_values("name") == [("cpu", 2), ("mem", 1), ("sys.cpu", 1)]
        assert db.tag_values("nosuch") == []
        # untagged names are not in the tag index (as with carbon's SKIP_TAGS_FOR_NONTAGGED)
        assert db.find_tagged(["name=plain.metric"]) == []
        db.delete("mem;host=b")
        assert db.tag_values("host") == [("a", 3)]
        db.delete("cpu;dc=x;host=a")
        db.delete("cpu;dc=y;host=a")
        assert db.tag_names() == ["host", "name"]


def test_reader_sees_new_tagged_series(tmp_path):
    with tismet.Database(str(tmp_path)) as db, \
            tismet.Database(str(tmp_path), readonly=True) as reader:
        db.create("a;k=1", [(60, 10)])
        assert reader.find_tagged(["k=1"]) == ["a;k=1"]
        db.create("b;k=1", [(60, 10)])
        assert reader.find_tagged(["k=1"]) == ["a;k=1", "b;k=1"]
        db.delete("a;k=1")
        assert reader.find_tagged(["k=1"]) == ["b;k=1"]


@pytest.mark.parametrize("name, reason", [
    ("a;b", "not tag=value"),
    ("a;=x", "not tag=value"),
    ("a;b=", "empty value"),
    ("a;b=~x", "starts with '~'"),
    ("~~;a=b", "no metric part"),
    ("a;b!c=1", "not allowed in tag"),
    ("a;b^c=1", "not allowed in tag"),
])
def test_tagged_names_graphite_cannot_parse_are_refused(tmp_path, name, reason):
    with tismet.Database(str(tmp_path)) as db:
        with pytest.raises(tismet.InvalidName, match=re.escape(reason)):
            db.create(name, [(60, 10)])
        db.create("ok;b=1", [(60, 10)])
        assert db.find_tagged(["b=1"]) == ["ok;b=1"]


@pytest.mark.parametrize("exprs, message", [
    (["nosep"], "Invalid tagspec"),
    (["a=b;c"], "Invalid tagspec"),
    (["a!=x"], "must not match the empty string"),
    (["a=~("], "invalid regular expression"),
])
def test_bad_expressions(tmp_path, exprs, message):
    with tismet.Database(str(tmp_path)) as db:
        db.create("m;a=1", [(60, 10)])
        with pytest.raises(ValueError, match=re.escape(message)):
            db.find_tagged(exprs)


def test_malformed_engine_query_is_refused(tmp_path):
    from tismet._native import lib, ffi
    with tismet.Database(str(tmp_path)) as db:
        db.create("m;a=1", [(60, 10)])
        out, n, c = ffi.new("char **"), ffi.new("size_t *"), ffi.new("size_t *")
        for q in [b"Xa\0\0", b"Ia", b"Ia\0v", b"H\0\0", b"Ha\0v\0\0", b"Na\0v\0\0"]:
            assert lib.tsm_tag_query(db._db, q, len(q), out, n, c) == lib.TSM_EINVAL, q
