"""Twisted dropin that makes carbon's ``DATABASE = tismet`` available.

carbon-cache.py runs through twistd, which imports the dropins under
``twisted/plugins`` on sys.path that provide an ``IServiceMaker``.  Importing
``tismet_carbon`` registers the ``tismet`` database with carbon.  The service
maker below is what keeps this module imported on every start: twistd
caches which dropins provide service makers (dropin.cache), and a dropin
that only imported the plugin would be skipped from the second start on
("No database plugin implemented for 'tismet'").

There is deliberately no ``__init__.py`` beside this file: twisted/plugins
is a namespace shared with Twisted and every other plugin distribution.
"""
try:
    from carbon import conf
except ImportError:  # tismet installed without carbon: nothing to register
    conf = None

if conf is not None:
    from twisted.application.service import IServiceMaker
    from twisted.plugin import IPlugin
    from zope.interface import implementer

    import tismet_carbon  # noqa: F401  (registers DATABASE = tismet)

    @implementer(IServiceMaker, IPlugin)
    class TismetCarbonCacheServiceMaker:
        """carbon-cache's service under another name; use carbon-cache.py."""

        tapname = "tismet-carbon-cache"
        description = "carbon-cache (registers carbon's DATABASE = tismet)"
        options = conf.CarbonCacheOptions

        def makeService(self, options):
            from carbon import service
            return service.createCacheService(options)

    serviceMaker = TismetCarbonCacheServiceMaker()
