"""Graphite's tag expressions, evaluated against the engine's tag index.

``seriesByTag('tag=value', ...)`` and graphite-web's ``/tags/findSeries``
take expressions ``tag=spec``, ``tag!=spec``, ``tag=~regex`` and
``tag!=~regex``.  graphite-web's reference tag database
(``graphite.tags.localdatabase.LocalDatabaseTagDB``) gives them these
meanings, which we reproduce exactly:

* a series without the tag is treated as having the empty value, so an
  expression that matches the empty string also matches series lacking the
  tag;
* at least one expression must not match the empty string;
* a regular expression not starting with ``^`` is wrapped as ``^(regex)``;
  the expressions that must find a value use ``re.search`` (SQL ``REGEXP``),
  those that filter use ``re.match``.

The engine stores, per tag, every value and the series carrying it.  Each
expression is reduced here to a set of values (regular expressions are
matched over the tag's distinct values, never over series), and the engine
intersects the sets (``tsm_tag_query`` in native/tismet.h).
"""
import re

from tismet import errors

_TAGSPEC = re.compile(r"^([^;!=]+)(!?=~?)([^;]*)$")

# term ops of tsm_tag_query
IN, NOT_IN, HAS, ABSENT = b"I", b"N", b"H", b"A"


def parse_tagspec(expr):
    """Split ``expr`` into (tag, operator, spec) as graphite-web does."""
    m = _TAGSPEC.match(expr) if isinstance(expr, str) else None
    if m is None:
        raise errors.InvalidArgument("Invalid tagspec %s" % (expr,))
    return m.group(1), m.group(2), m.group(3)


def _anchored(spec):
    if not spec.startswith("^"):
        spec = "^(" + spec + ")"
    try:
        return re.compile(spec)
    except re.error as e:
        raise errors.InvalidArgument("invalid regular expression %r: %s" % (spec, e)) from None


def reduce_expressions(exprs, values_of):
    """The engine terms for graphite tag expressions ``exprs``.

    ``values_of(tag)`` returns the list of the tag's distinct values; it is
    called only for regular-expression terms.  Returns a list of
    (op, tag, values) triples; raises InvalidArgument for a malformed
    expression or when every expression matches the empty string.
    """
    terms = []
    all_match_empty = True
    for expr in exprs:
        tag, op, spec = parse_tagspec(expr)
        if op == "=":
            matches_empty = spec == ""
            term = (ABSENT, tag, ()) if matches_empty else (IN, tag, (spec,))
        elif op == "!=":
            matches_empty = spec != ""
            term = (NOT_IN, tag, (spec,)) if matches_empty else (HAS, tag, ())
        elif op == "=~":
            rx = _anchored(spec)
            matches_empty = rx.match("") is not None
            if matches_empty:
                term = (NOT_IN, tag, [v for v in values_of(tag) if rx.match(v) is None])
            else:
                term = (IN, tag, [v for v in values_of(tag) if rx.search(v)])
        else:  # "!=~"
            rx = _anchored(spec)
            matches_empty = rx.match("") is None
            if matches_empty:
                term = (NOT_IN, tag, [v for v in values_of(tag) if rx.match(v) is not None])
            else:
                term = (IN, tag, [v for v in values_of(tag) if not rx.search(v)])
        all_match_empty = all_match_empty and matches_empty
        terms.append(term)
    if all_match_empty:
        raise errors.InvalidArgument("At least one tagspec must not match the empty string")
    return terms


def encode_terms(terms):
    """The byte query of tsm_tag_query for (op, tag, values) terms."""
    out = []
    for op, tag, values in terms:
        out.append(op)
        out.append(tag.encode("utf-8", "surrogateescape"))
        out.append(b"\0")
        for v in values:
            if v:
                out.append(v.encode("utf-8", "surrogateescape"))
                out.append(b"\0")
        out.append(b"\0")
    return b"".join(out)
