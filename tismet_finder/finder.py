"""TismetFinder: graphite-web's finder over Tismet databases.

* ``find_nodes`` answers Graphite globs from the engine's name index with
  StandardFinder's results: branches and leaves (a path can be both), the
  pattern's escaped components kept as written, tagged names found by their
  exact name, and ``seriesByTag(...)`` resolved through the tag index.
* ``fetch`` answers a whole render request: every pattern is resolved, then
  each database gets one ``fetch_many`` call for all its series.
* ``tags = True``: graphite-web passes ``seriesByTag`` patterns and tag
  auto-complete to this finder instead of its TagDB.
* Series that cannot be read (a corrupt page, an I/O error) are logged and
  left out; the rest of the request is answered.

The databases are opened read-only, lazily, once per process (stores.py).
Readers see what carbon wrote as soon as its write call returned, so
CarbonLink is not needed.
"""
import time

from django.conf import settings

from graphite.finders.utils import BaseFinder
from graphite.intervals import Interval, IntervalSet
from graphite.logger import log
from graphite.node import BranchNode, LeafNode
from graphite.readers.utils import BaseReader
from graphite.util import find_escaped_pattern_fields

import tismet
from tismet_finder.stores import stores_from_settings
from tismet_finder.tagdb import TagIndex

SERIES_BY_TAG = "seriesByTag("


def tag_expressions(pattern):
    """The tag expressions of a ``seriesByTag('a=b', ...)`` pattern, parsed with
    graphite-web's own grammar as its Store does."""
    from graphite.render.grammar import grammar
    return [t.string[1:-1] for t in grammar.parseString(pattern).expression.call.args
            if t.string]


class TismetReader(BaseReader):
    """One series of one database (graphite-web's per-node reader)."""

    __slots__ = ("store", "name")

    def __init__(self, store, name):
        self.store = store
        self.name = name

    def get_intervals(self):
        db = self.store.db()
        now = time.time()
        if db is None:
            return IntervalSet([])
        try:
            retention = db.max_retention(self.name)
        except tismet.MetricNotFound:
            return IntervalSet([])
        return IntervalSet([Interval(now - retention, now)])

    def fetch(self, startTime, endTime, now=None, requestContext=None):
        db = self.store.db()
        if db is None:
            return None
        try:
            return db.fetch(self.name, startTime, endTime, now=now)
        except tismet.MetricNotFound:
            return None


def keep_arenas_setting():
    """TISMET_KEEP_ARENAS_MB from graphite-web's settings (default 64; 0 turns it off)."""
    value = getattr(settings, "TISMET_KEEP_ARENAS_MB", 64)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65536:
        raise tismet.InvalidConfiguration(
            "TISMET_KEEP_ARENAS_MB must be a whole number of MiB (0 turns it off), not %r"
            % (value,))
    return value


class TismetFinder(BaseFinder):
    local = True
    tags = True

    def __init__(self, directories=None):
        super().__init__()
        self.stores = stores_from_settings(directories)
        self.tag_index = TagIndex(self.stores)
        # renders make and drop millions of floats: keep the allocator's arenas
        # (tismet.keep_arenas) so each request does not fault its memory in again
        tismet.keep_arenas(keep_arenas_setting())

    # -- names -----------------------------------------------------------------

    def _matches(self, pattern):
        """(store, path, name, is_leaf) for every match of one pattern in every
        database: `name` is the stored series, `path` what graphite-web shows
        (they differ only where StandardFinder shows the pattern's own text)."""
        if pattern.startswith(SERIES_BY_TAG):
            exprs = tag_expressions(pattern)
            for store in self.stores:
                db = store.db()
                if db is not None:
                    for name in db.find_tagged(exprs):
                        yield store, name, name, True
            return
        parts = pattern.split(".")
        trailing_dot = len(parts) > 1 and not parts[-1]
        if "" in parts:
            # StandardFinder joins an empty component as the directory itself
            # (os.path.join): it is left out of the match and the path, but a
            # trailing one shows the directory as a branch, 'servers.'
            parts = [part for part in parts if part]
            if not parts:
                return
            pattern = ".".join(parts)
        escaped = list(find_escaped_pattern_fields(pattern))
        for store in self.stores:
            db = store.db()
            if db is None:
                continue
            for name, is_leaf in db.find(pattern):
                path = name
                if escaped and ";" not in name:
                    fields = name.split(".")
                    for i in escaped:
                        # shown as the pattern wrote it, backslashes removed
                        fields[i] = parts[i].replace("\\", "")
                    path = ".".join(fields)
                if trailing_dot:
                    if is_leaf:
                        continue
                    path += "."
                yield store, path, name, is_leaf

    def find_nodes(self, query):
        for store, path, name, is_leaf in self._matches(query.pattern):
            if is_leaf:
                yield LeafNode(path, TismetReader(store, name))
            elif not query.leaves_only:
                yield BranchNode(path)

    def get_index(self, requestContext):
        names = set()
        for store, path, name, is_leaf in self._matches("**"):
            if is_leaf:
                names.add(path)
        return sorted(names)

    # -- data ------------------------------------------------------------------

    def fetch(self, patterns, start_time, end_time, now=None, requestContext=None):
        wanted = {}   # store -> {name: [(pattern, path)]}
        for pattern in patterns:
            for store, path, name, is_leaf in self._matches(pattern):
                if is_leaf:
                    wanted.setdefault(store, {}).setdefault(name, []).append((pattern, path))
        results = []
        for store, by_name in wanted.items():
            db = store.db()
            names = list(by_name)
            try:
                answers = db.fetch_many(names, start_time, end_time, now=now,
                                        on_error="return")
            except tismet.TismetError as e:
                log.warning("tismet: fetching %d series from %s failed: %s"
                            % (len(names), store.path, e))
                continue
            for name, answer in zip(names, answers):
                if answer is None:
                    continue
                if isinstance(answer, Exception):
                    log.warning("tismet: leaving out %s from %s: %s" % (name, store.path, answer))
                    continue
                time_info, values = answer
                for pattern, path in by_name[name]:
                    results.append({
                        "pathExpression": pattern,
                        "path": path,
                        "name": path,
                        "time_info": time_info,
                        "values": values,
                    })
        return results

    # -- tags ------------------------------------------------------------------

    def auto_complete_tags(self, exprs, tagPrefix=None, limit=None, requestContext=None):
        limit = settings.TAGDB_AUTOCOMPLETE_LIMIT if limit is None else int(limit)
        return self.tag_index.auto_complete_tags(exprs, tagPrefix, limit)

    def auto_complete_values(self, exprs, tag, valuePrefix=None, limit=None,
                             requestContext=None):
        limit = settings.TAGDB_AUTOCOMPLETE_LIMIT if limit is None else int(limit)
        return self.tag_index.auto_complete_values(exprs, tag, valuePrefix, limit)
