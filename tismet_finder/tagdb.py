"""Tag queries over Tismet databases, for graphite-web.

``TagIndex`` answers graphite-web's tag questions (find series, list tags
and values, auto-complete) from the engine's tag index of one or more
databases, merging them.  Both ``TismetFinder`` (``tags = True``: it answers
``seriesByTag`` and ``/tags/autoComplete/*``) and ``TismetTagDB`` (graphite's
``TAGDB`` setting: ``/tags``, ``/tags/<tag>``, ``/tags/findSeries``) use it.

The answers are those of graphite-web's reference LocalDatabaseTagDB over
the same series, without its sqlite ids.  Carbon fills the index (the
engine indexes every tagged series it creates), so the tag-writing
endpoints answer with an error that says so.  Results are not cached: a
series carbon has just created is found on the next request.
"""
import re
import time

from graphite.tags.base import BaseTagDB
from graphite.tags.utils import TaggedSeries
from graphite.util import HttpError

from tismet_finder.stores import stores_from_settings

WRITE_REFUSED = ("Tismet indexes tags in carbon: carbon-cache (DATABASE = tismet) indexes "
                 "every tagged series when it creates it, so there is nothing to write "
                 "here; to remove series use `tismet delete DB_DIR PATTERN`")


def _filter(pattern):
    """graphite's tag/value filter: a regular expression anchored at the start."""
    if not pattern:
        return None
    if not pattern.startswith("^"):
        pattern = "^(" + pattern + ")"
    return re.compile(pattern)


def _limit(limit, default):
    return default if limit is None else int(limit)


def parse_path(path):
    """The tags of a stored tagged name, as TaggedSeries.parse gives them."""
    metric, _, rest = path.partition(";")
    tags = {}
    for segment in rest.split(";") if rest else ():
        tag, _, value = segment.partition("=")
        tags[tag] = value
    tags["name"] = metric.lstrip("~")
    return tags


class TagIndex:
    def __init__(self, stores):
        self.stores = stores

    def _dbs(self):
        return [db for db in (s.db() for s in self.stores) if db is not None]

    def find_series(self, exprs):
        """Sorted names of the series matching every expression."""
        dbs = self._dbs()
        if not dbs:
            # still validate the expressions, as a database would
            from tismet import tags
            tags.reduce_expressions(exprs, lambda tag: [])
            return []
        found = set()
        for db in dbs:
            found.update(db.find_tagged(list(exprs)))
        return sorted(found)

    def tag_names(self):
        names = set()
        for db in self._dbs():
            names.update(db.tag_names())
        return sorted(names)

    def tag_values(self, tag):
        """Sorted (value, count) pairs, counts summed over the databases."""
        counts = {}
        for db in self._dbs():
            for value, count in db.tag_values(tag):
                counts[value] = counts.get(value, 0) + count
        return sorted(counts.items())

    def list_tags(self, tag_filter=None, limit=None):
        rx = _filter(tag_filter)
        names = [t for t in self.tag_names() if rx is None or rx.search(t)]
        return names[:int(limit)] if limit else names

    def list_values(self, tag, value_filter=None, limit=None):
        rx = _filter(value_filter)
        pairs = [(v, c) for v, c in self.tag_values(tag) if rx is None or rx.search(v)]
        return pairs[:int(limit)] if limit else pairs

    def auto_complete_tags(self, exprs, prefix, limit):
        """What BaseTagDB.auto_complete_tags answers (limit already resolved)."""
        if not exprs:
            return self.list_tags("^(" + re.escape(prefix) + ")" if prefix else None, limit)
        searched = {BaseTagDB.parse_tagspec(e)[0] for e in exprs}
        found = set()
        for path in self.find_series(exprs):
            for tag in parse_path(path):
                if tag not in searched and (not prefix or tag.startswith(prefix)):
                    found.add(tag)
        return sorted(found)[:limit]

    def auto_complete_values(self, exprs, tag, prefix, limit):
        """What BaseTagDB.auto_complete_values answers (limit already resolved)."""
        if not exprs:
            pairs = self.list_values(tag, "^(" + re.escape(prefix) + ")" if prefix else None,
                                     limit)
            return [v for v, _ in pairs]
        found = set()
        for path in self.find_series(list(exprs) + [tag + "!="]):
            value = parse_path(path).get(tag)
            if value is not None and (not prefix or value.startswith(prefix)):
                found.add(value)
        return sorted(found)[:limit]

    def get_series(self, path):
        for db in self._dbs():
            if ";" in path and db.exists(path):
                tags = parse_path(path)
                return TaggedSeries(tags["name"], tags)
        return None


class TismetTagDB(BaseTagDB):
    """graphite-web's TAGDB backed by the engine's tag index (``TISMET_DIRS``)."""

    def __init__(self, settings, *args, **kwargs):
        super().__init__(settings, *args, **kwargs)
        self.index = TagIndex(stores_from_settings(getattr(settings, "TISMET_DIRS", None)))

    def find_series(self, tags, requestContext=None):
        start = time.time()
        try:
            return self._find_series(tags, requestContext)
        finally:
            self.log_info("find_series", "completed in {:.6}s".format(time.time() - start))

    def _find_series(self, tags, requestContext=None):
        return self.index.find_series(tags)

    def get_series(self, path, requestContext=None):
        return self.index.get_series(path)

    def list_tags(self, tagFilter=None, limit=None, requestContext=None):
        return [{"tag": t} for t in self.index.list_tags(tagFilter, limit)]

    def get_tag(self, tag, valueFilter=None, limit=None, requestContext=None):
        if tag not in self.index.tag_names():
            return None
        return {"tag": tag, "values": self.list_values(tag, valueFilter, limit)}

    def list_values(self, tag, valueFilter=None, limit=None, requestContext=None):
        return [{"value": v, "count": c}
                for v, c in self.index.list_values(tag, valueFilter, limit)]

    def auto_complete_tags(self, exprs, tagPrefix=None, limit=None, requestContext=None):
        limit = _limit(limit, self.settings.TAGDB_AUTOCOMPLETE_LIMIT)
        return self.index.auto_complete_tags(exprs, tagPrefix, limit)

    def auto_complete_values(self, exprs, tag, valuePrefix=None, limit=None,
                             requestContext=None):
        limit = _limit(limit, self.settings.TAGDB_AUTOCOMPLETE_LIMIT)
        return self.index.auto_complete_values(exprs, tag, valuePrefix, limit)

    def tag_series(self, series, requestContext=None):
        raise HttpError(WRITE_REFUSED, status=501)

    def tag_multi_series(self, seriesList, requestContext=None):
        raise HttpError(WRITE_REFUSED, status=501)

    def del_series(self, series, requestContext=None):
        raise HttpError(WRITE_REFUSED, status=501)

    def del_multi_series(self, seriesList, requestContext=None):
        raise HttpError(WRITE_REFUSED, status=501)
