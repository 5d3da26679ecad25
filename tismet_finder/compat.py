"""Make graphite-web 1.1.10's ``/functions`` work on Python 3.11.

graphite-web describes each render function with ``inspect.getargspec`` and
``inspect.formatargspec``, which Python 3.11 removed, so ``/functions`` (which
Grafana calls to fill its function editor) answers HTTP 500.  Importing this
module from local_settings.py puts both back, built on
``inspect.getfullargspec``, with the output the old functions gave::

    import tismet_finder.compat  # noqa

It changes nothing on a Python that still has them, and imports nothing but
``inspect`` (local_settings.py is read before Django is set up).
"""
import collections
import inspect

ArgSpec = collections.namedtuple("ArgSpec", "args varargs keywords defaults")


def getargspec(func):
    """inspect.getargspec as Python 3.10 had it (keyword-only arguments ignored)."""
    spec = inspect.getfullargspec(func)
    return ArgSpec(spec.args, spec.varargs, spec.varkw, spec.defaults)


def formatargspec(args, varargs=None, varkw=None, defaults=None, *unused, **unused_kw):
    """inspect.formatargspec's default output: ``(a, b=1, *args, **kwargs)``."""
    first_default = len(args) - len(defaults) if defaults else len(args)
    parts = []
    for i, arg in enumerate(args):
        if i >= first_default:
            parts.append("%s=%r" % (arg, defaults[i - first_default]))
        else:
            parts.append(str(arg))
    if varargs is not None:
        parts.append("*" + varargs)
    if varkw is not None:
        parts.append("**" + varkw)
    return "(" + ", ".join(parts) + ")"


if not hasattr(inspect, "getargspec"):
    inspect.getargspec = getargspec
if not hasattr(inspect, "formatargspec"):
    inspect.formatargspec = formatargspec
