"""graphite-web's side of Tismet: a finder and a tag database over Tismet databases.

In graphite-web's local_settings.py::

    STORAGE_FINDERS = ('tismet_finder.TismetFinder',)
    TAGDB = 'tismet_finder.TismetTagDB'
    TISMET_DIRS = ['/var/lib/graphite/tismet']
    CARBONLINK_HOSTS = []        # readers see carbon's writes directly
    REPLICATION_FACTOR = 0
    import tismet_finder.compat  # noqa: makes /functions work on Python 3.11

The classes are imported on first use (PEP 562), so local_settings.py can
import ``tismet_finder.compat`` before Django's settings exist.
"""

__all__ = ["TismetFinder", "TismetTagDB"]


def __getattr__(name):
    if name == "TismetFinder":
        from tismet_finder.finder import TismetFinder
        return TismetFinder
    if name == "TismetTagDB":
        from tismet_finder.tagdb import TismetTagDB
        return TismetTagDB
    raise AttributeError("module 'tismet_finder' has no attribute %r" % name)
