"""Shared fixtures and hypothesis profiles for the tismet test suite.

Environment:
  TISMET_SOAK=1        long variants: hypothesis profile "soak" (many more examples) and
                       more kill/crash cycles and longer concurrency runs.
  HYPOTHESIS_PROFILE   explicit profile name ("ci" default, "soak").

The engine is imported as installed; if `import tismet` fails, the repository root
(the in-place `make dev` build) is put on sys.path.
"""

import os
import pathlib
import shutil
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
TESTS = pathlib.Path(__file__).resolve().parent

try:  # prefer an installed tismet; fall back to the in-place build
    import tismet  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT))
    sys.modules.pop("tismet", None)

if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

SOAK = os.environ.get("TISMET_SOAK") == "1"

try:
    from hypothesis import HealthCheck, settings

    _suppress = [HealthCheck.too_slow, HealthCheck.data_too_large,
                 HealthCheck.filter_too_much]
    settings.register_profile("ci", max_examples=100, deadline=None,
                              suppress_health_check=_suppress, print_blob=True)
    settings.register_profile("soak", max_examples=2000, deadline=None,
                              suppress_health_check=_suppress, print_blob=True)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "soak" if SOAK else "ci"))
except ImportError:  # pragma: no cover - hypothesis is a test requirement
    pass


@pytest.fixture
def db_dir(tmp_path):
    """A fresh (not yet existing) database directory."""
    return tmp_path / "db"


@pytest.fixture
def db(db_dir):
    """A writable Database in a fresh directory, closed at teardown."""
    import tismet
    d = tismet.Database(str(db_dir), durability="none")
    try:
        yield d
    finally:
        d.close()


@pytest.fixture
def whisper_dir(tmp_path):
    """A directory for reference whisper files."""
    p = tmp_path / "whisper"
    p.mkdir()
    return p


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture(autouse=True)
def _drop_tmp_path_of_passed_tests(request):
    """Databases preallocate their log: free the disk of tests that passed."""
    tmp = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    rep = getattr(request.node, "rep_call", None)
    if tmp is not None and rep is not None and rep.passed:
        shutil.rmtree(tmp, ignore_errors=True)


def pytest_configure(config):
    # graphite-web 1.1.10 and django-tagging use Django 3.0 APIs that Django 4 removes;
    # their deprecation warnings are not ours to fix and would drown the summary
    for module in ("django", "graphite", "tagging", "twisted", "carbon"):
        config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:%s" % module)
        config.addinivalue_line("filterwarnings",
                                "ignore::PendingDeprecationWarning:%s" % module)
    try:
        import django.utils.deprecation  # noqa: F401
    except ImportError:
        return
    config.addinivalue_line("filterwarnings",
                            "ignore::django.utils.deprecation.RemovedInDjango40Warning")


def _dead_writers_hot_files():
    """Hot files (/dev/shm/tismet-hot.<pid>.<gen>) of writer processes that are gone.

    A writer killed by a test leaves its hot file until the next writer of that database
    opens; databases that a test abandons after a kill would leave them in /dev/shm."""
    import glob
    out = []
    for path in glob.glob("/dev/shm/tismet-hot.*"):
        try:
            pid = int(os.path.basename(path).split(".")[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            out.append(path)
        except (ValueError, IndexError, PermissionError):
            pass
    return out


def pytest_sessionfinish(session, exitstatus):
    for path in _dead_writers_hot_files():
        try:
            os.unlink(path)
        except OSError:
            pass
