"""Which storage-schemas.conf and storage-aggregation.conf rules carbon 1.1.10 gives a name.

carbon-cache reads both files at start (``carbon.storage.loadStorageSchemas``
and ``loadAggregationSchemas``) and, when it creates a metric, takes the
*first* section in file order whose ``pattern`` regular expression matches
the (normalised) name with ``re.search`` (``carbon.writer``); when none
matches, the built-in default (60:10080, i.e. 1m:7d) and whisper's default
aggregation (xFilesFactor 0.5, average).  Sections carbon skips (no
``pattern``, no ``retentions``, archives the database refuses, an
xFilesFactor that is not a number) and mistakes that stop carbon at start
(a retention it cannot parse, a bad regular expression, an xFilesFactor
outside [0, 1], an unknown aggregation method) are reported.

When carbon is installed its own loaders are used for the rules (the
answer is carbon's by construction); :func:`load_rules` is a line-by-line
transcription used without carbon and for the messages.
"""
import os
import re
from configparser import ConfigParser

import tismet
from tismet import admin

SCHEMAS_FILE = "storage-schemas.conf"
AGGREGATION_FILE = "storage-aggregation.conf"
DEFAULT_ARCHIVES = [(60, 60 * 24 * 7)]     # carbon.storage.defaultArchive


class ConfigError(Exception):
    """carbon would refuse to start with this configuration."""


class _OrderedConfigParser(ConfigParser):
    """carbon.conf.OrderedConfigParser: sections in the order their lines appear."""
    _ordered_sections = []

    def read(self, path):
        if not os.access(path, os.R_OK):
            raise ConfigError("Error: Missing config file or wrong perms on %s" % path)
        result = ConfigParser.read(self, path)
        sections = []
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("[") and line.endswith("]"):
                    sections.append(line[1:-1])
        self._ordered_sections = sections
        return result

    def sections(self):
        return list(self._ordered_sections)


def _schema_rule(section, pattern, archives):
    return {"section": section, "pattern": pattern, "archives": [list(a) for a in archives],
            "retentions": admin.format_retentions(archives)}


def load_rules(conf_dir):
    """(schema rules, aggregation rules, notes) as carbon 1.1.10 loads them from
    ``conf_dir``; raises ConfigError where carbon would stop at start.  Each rule
    is a dict with ``section`` and ``pattern`` (None for the built-in default)."""
    notes = []
    schemas_path = os.path.join(conf_dir, SCHEMAS_FILE)
    config = _OrderedConfigParser()
    try:
        config.read(schemas_path)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError("%s: %s" % (schemas_path, e))
    schemas = []
    for section in config.sections():
        options = dict(config.items(section))
        pattern = options.get("pattern")
        try:
            retentions = options["retentions"].split(",")
        except KeyError:
            notes.append("%s: [%s] has no 'retentions': carbon skips it" % (SCHEMAS_FILE, section))
            continue
        try:
            archives = [admin.parse_retention(s) for s in retentions]
        except (ValueError, ZeroDivisionError) as e:
            raise ConfigError("%s in section [%s] in %s" % (e, section.title(), schemas_path))
        if not pattern:
            notes.append("%s: [%s] has no 'pattern': carbon skips it" % (SCHEMAS_FILE, section))
            continue
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConfigError("%s: [%s] pattern %r is not a valid regular expression: %s"
                              % (SCHEMAS_FILE, section, pattern, e))
        try:
            tismet.validate_archives(archives)
        except ValueError as e:
            notes.append("%s: [%s] is invalid, carbon skips it: %s" % (SCHEMAS_FILE, section, e))
            continue
        schemas.append(_schema_rule(section, pattern, archives))
    schemas.append(_schema_rule("default", None, DEFAULT_ARCHIVES))

    aggregations = []
    agg_path = os.path.join(conf_dir, AGGREGATION_FILE)
    config = _OrderedConfigParser()
    try:
        config.read(agg_path)
    except (IOError, ConfigError):
        notes.append("%s not found or unreadable: carbon ignores it" % AGGREGATION_FILE)
    for section in config.sections():
        options = dict(config.items(section))
        pattern = options.get("pattern")
        xff = options.get("xfilesfactor")
        method = options.get("aggregationmethod")
        try:
            if xff is not None:
                xff = float(xff)
                if not 0 <= xff <= 1:
                    raise ConfigError("%s: [%s] xFilesFactor value out of [0,1] bounds"
                                      % (AGGREGATION_FILE, section))
            if method is not None and method not in tismet.AGGREGATION_METHODS:
                raise ConfigError("%s: [%s] aggregationMethod %r is not one of %s"
                                  % (AGGREGATION_FILE, section, method,
                                     ", ".join(tismet.AGGREGATION_METHODS)))
        except ValueError:
            notes.append("%s: [%s] is invalid, carbon skips it" % (AGGREGATION_FILE, section))
            continue
        if not pattern:
            notes.append("%s: [%s] has no 'pattern': carbon skips it" % (AGGREGATION_FILE, section))
            continue
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConfigError("%s: [%s] pattern %r is not a valid regular expression: %s"
                              % (AGGREGATION_FILE, section, pattern, e))
        aggregations.append({"section": section, "pattern": pattern, "xFilesFactor": xff,
                             "aggregationMethod": method})
    aggregations.append({"section": "default", "pattern": None, "xFilesFactor": None,
                         "aggregationMethod": None})
    return schemas, aggregations, notes


class _Validator:
    """What carbon's loaders ask of ``carbon.state.database`` (DATABASE = tismet)."""
    aggregationMethods = list(tismet.AGGREGATION_METHODS)

    @staticmethod
    def validateArchiveList(archives):
        tismet.validate_archives(archives)


def load_rules_with_carbon(conf_dir):
    """The rules as carbon's own loaders return them (None when carbon is missing)."""
    try:
        from carbon import state
        from carbon.conf import settings
    except ImportError:
        return None
    # carbon.storage reads settings.CONF_DIR when first imported (carbon sets it from
    # its command line first); the paths are given below anyway
    settings.setdefault("CONF_DIR", conf_dir)
    from carbon import storage
    saved = (storage.STORAGE_SCHEMAS_CONFIG, storage.STORAGE_AGGREGATION_CONFIG, state.database)
    storage.STORAGE_SCHEMAS_CONFIG = os.path.join(conf_dir, SCHEMAS_FILE)
    storage.STORAGE_AGGREGATION_CONFIG = os.path.join(conf_dir, AGGREGATION_FILE)
    state.database = _Validator()
    try:
        schema_objs = storage.loadStorageSchemas()
        agg_objs = storage.loadAggregationSchemas()
    except (SystemExit, Exception) as e:
        raise ConfigError("carbon would refuse to start: %s: %s" % (type(e).__name__, e))
    finally:
        storage.STORAGE_SCHEMAS_CONFIG, storage.STORAGE_AGGREGATION_CONFIG, state.database = saved
    schemas = [_schema_rule(s.name, getattr(s, "pattern", None),
                            [a.getTuple() for a in s.archives]) for s in schema_objs]
    aggregations = [{"section": s.name, "pattern": getattr(s, "pattern", None),
                     "xFilesFactor": s.archives[0], "aggregationMethod": s.archives[1]}
                    for s in agg_objs]
    return schemas, aggregations


def normalize(name):
    """The name as carbon's cache stores it (tags sorted, carbon.util.TaggedSeries)."""
    try:
        from carbon.util import TaggedSeries
    except ImportError:
        TaggedSeries = None
    if TaggedSeries is not None:
        try:
            return TaggedSeries.parse(name).path
        except Exception:
            return name          # carbon logs the error and keeps the name as it is
    if ";" not in name:
        return name
    metric, *segments = name.split(";")
    tags = dict(s.split("=", 1) for s in segments if "=" in s)
    return metric + "".join(";%s=%s" % (t, tags[t]) for t in sorted(tags))


def _first(rules, name):
    for rule in rules:
        if rule["pattern"] is None or re.search(rule["pattern"], name):
            return rule
    return None


def debug(conf_dir, name, use_carbon=True):
    """The rules carbon gives ``name`` and what it would create: a dict."""
    if not os.path.isdir(conf_dir):
        raise ConfigError("no such configuration directory: %s" % conf_dir)
    try:
        schemas, aggregations, notes = load_rules(conf_dir)
    except ConfigError as e:
        raise ConfigError("carbon would refuse to start: %s" % e)
    source = "tismet (carbon's parsing, transcribed)"
    if use_carbon:
        loaded = load_rules_with_carbon(conf_dir)
        if loaded is not None:
            schemas, aggregations = loaded
            source = "carbon %s" % _carbon_version()
    metric = normalize(name)
    schema = _first(schemas, metric)
    agg = _first(aggregations, metric)
    xff, method = agg["xFilesFactor"], agg["aggregationMethod"]
    return {"name": name, "metric": metric, "conf_dir": os.path.abspath(conf_dir),
            "rules_from": source, "schema": schema, "aggregation": agg,
            "archives": schema["archives"], "retentions": schema["retentions"],
            "xFilesFactor": 0.5 if xff is None else xff,
            "aggregationMethod": "average" if method is None else method,
            "notes": notes}


def _carbon_version():
    try:
        from importlib.metadata import version
        return version("carbon")
    except Exception:
        return "(version unknown)"
