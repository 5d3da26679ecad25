"""A running Graphite on Tismet: carbon-cache + graphite-web + a collector.

    python demo/run.py [--root DIR] [--cluster] [--free-ports] [--interval S]

Writes a complete configuration under ``--root`` (default ``demo-run/``):
carbon.conf with ``DATABASE = tismet`` and every listener on 127.0.0.1,
storage-schemas.conf, storage-aggregation.conf, and graphite-web local
settings with the Tismet finder and tag database; then starts the stock
carbon-cache.py, graphite-web under gunicorn (static files included) and
``demo/collector.py``, which sends this machine's figures every
``--interval`` seconds.  It prints the URLs to open and runs until Ctrl-C
(or SIGTERM), then stops everything it started.

``--cluster`` runs Graphite's own distribution instead: carbon-relay with
consistent hashing in front of two carbon-cache instances (each its own
Tismet directory) and two graphite-web instances joined by CLUSTER_SERVERS.

``--ready-file F`` writes a JSON description of the running stack (ports,
URLs, directories) to F once everything answers; the tests use it.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)

SCHEMAS = """\
# Tismet pays only for points written, so long retentions cost nothing up front.
[carbon]
pattern = ^carbon\\.
retentions = 10s:1d,1m:30d

[demo]
pattern = .*
retentions = 10s:6h,1m:7d,10m:5y
"""

AGGREGATION = """\
[min]
pattern = \\.min$
xFilesFactor = 0.1
aggregationMethod = min

[max]
pattern = \\.max$
xFilesFactor = 0.1
aggregationMethod = max

[count]
pattern = \\.count$
xFilesFactor = 0
aggregationMethod = sum

[default_average]
pattern = .*
xFilesFactor = 0.5
aggregationMethod = average
"""

WEB_SETTINGS = """\
# graphite-web local settings written by tismet's demo/run.py
import tismet_finder.compat  # noqa: /functions on Python 3.11

SECRET_KEY = {secret!r}
ALLOWED_HOSTS = ['127.0.0.1', 'localhost']
TIME_ZONE = 'UTC'
# RemoteFinder asks the CLUSTER_SERVERS peers (it does nothing when there are none)
STORAGE_FINDERS = ('graphite.finders.remote.RemoteFinder', 'tismet_finder.TismetFinder')
TAGDB = 'tismet_finder.TismetTagDB'
TISMET_DIRS = {dirs!r}
CARBONLINK_HOSTS = []
REPLICATION_FACTOR = 0
CLUSTER_SERVERS = {cluster!r}
STORAGE_DIR = {storage!r}
LOG_DIR = {logdir!r}
INDEX_FILE = {index!r}
STATIC_ROOT = {static!r}
# graphite-web's settings look for its static 'content' in WEBAPP_DIR; pip puts it under sys.prefix
WEBAPP_DIR = {webapp!r}

# graphite-web's Django settings, loaded here so the URL configuration can add static files
from graphite.app_settings import *  # noqa
GRAPHITE_WEB_APP_SETTINGS_LOADED = True
ROOT_URLCONF = 'tismet_demo_urls'
DATABASES = {{'default': {{'ENGINE': 'django.db.backends.sqlite3', 'NAME': {sqlite!r}}}}}
"""

WEB_URLS = """\
# graphite-web's URLs plus its static files (the demo has no front web server)
from django.conf import settings
from django.urls import re_path
from django.views.static import serve

from graphite.urls import urlpatterns as graphite_urlpatterns

urlpatterns = [
    re_path(r'^static/(?P<path>.*)$', serve, {'document_root': settings.STATIC_ROOT}),
    re_path(r'^favicon\.ico$', serve, {'document_root': settings.STATIC_ROOT,
                                        'path': 'img/favicon.ico'}),
] + list(graphite_urlpatterns)
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit("demo: %s exited with code %s (see its log)" % (proc.args[0], proc.returncode))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("demo: nothing answered on port %d after %ds" % (port, timeout))


def wait_http(url, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit("demo: graphite-web exited with code %s (see its log)" % proc.returncode)
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise SystemExit("demo: %s did not answer after %ds" % (url, timeout))


class Stack:
    def __init__(self, root, cluster=False, free_ports=False, interval=10):
        self.root = os.path.abspath(root)
        self.cluster = cluster
        self.interval = interval
        self.procs = []
        if free_ports:
            self.ports = {k: free_port() for k in (
                "line", "pickle", "query", "web", "line_b", "pickle_b", "query_b", "web_b",
                "relay_line", "relay_pickle")}
        else:
            self.ports = {"line": 2003, "pickle": 2004, "query": 7002, "web": 8080,
                          "line_b": 2103, "pickle_b": 2104, "query_b": 7102, "web_b": 8081,
                          "relay_line": 2013, "relay_pickle": 2014}
        self.conf = os.path.join(self.root, "conf")
        self.storage = os.path.join(self.root, "storage")
        self.instances = ["a", "b"] if cluster else ["a"]
        self.tismet_dirs = {i: os.path.join(self.storage, "tismet-%s" % i) for i in self.instances}

    # -- configuration -----------------------------------------------------------

    def write_config(self):
        os.makedirs(self.conf, exist_ok=True)
        os.makedirs(self.storage, exist_ok=True)
        p = self.ports
        common = ("ENABLE_UDP_LISTENER = False\nUSE_INSECURE_UNPICKLER = False\n"
                  "MAX_CACHE_SIZE = inf\nMAX_UPDATES_PER_SECOND = inf\n"
                  "MAX_CREATES_PER_MINUTE = inf\nCARBON_METRIC_INTERVAL = 10\n"
                  "LOG_UPDATES = False\nDATABASE = tismet\n")
        sections = []
        for inst, (line, pickle, query) in zip(self.instances, [
                (p["line"], p["pickle"], p["query"]), (p["line_b"], p["pickle_b"], p["query_b"])]):
            name = "cache" if inst == "a" else "cache:%s" % inst
            sections.append(
                "[%s]\nLINE_RECEIVER_INTERFACE = 127.0.0.1\nLINE_RECEIVER_PORT = %d\n"
                "PICKLE_RECEIVER_INTERFACE = 127.0.0.1\nPICKLE_RECEIVER_PORT = %d\n"
                "CACHE_QUERY_INTERFACE = 127.0.0.1\nCACHE_QUERY_PORT = %d\n"
                "TISMET_DIR = %s\n%s" % (name, line, pickle, query, self.tismet_dirs[inst], common))
        if self.cluster:
            sections.append(
                "[relay]\nLINE_RECEIVER_INTERFACE = 127.0.0.1\nLINE_RECEIVER_PORT = %d\n"
                "PICKLE_RECEIVER_INTERFACE = 127.0.0.1\nPICKLE_RECEIVER_PORT = %d\n"
                "ENABLE_UDP_LISTENER = False\nUSE_INSECURE_UNPICKLER = False\n"
                "RELAY_METHOD = consistent-hashing\nREPLICATION_FACTOR = 1\n"
                "DESTINATIONS = 127.0.0.1:%d:a, 127.0.0.1:%d:b\n"
                % (p["relay_line"], p["relay_pickle"], p["pickle"], p["pickle_b"]))
        with open(os.path.join(self.conf, "carbon.conf"), "w") as f:
            f.write("\n".join(sections))
        with open(os.path.join(self.conf, "storage-schemas.conf"), "w") as f:
            f.write(SCHEMAS)
        with open(os.path.join(self.conf, "storage-aggregation.conf"), "w") as f:
            f.write(AGGREGATION)
        for inst in self.instances:
            self._write_web(inst)

    def _web_dir(self, inst):
        return os.path.join(self.root, "webapp-%s" % inst)

    def _write_web(self, inst):
        d = self._web_dir(inst)
        os.makedirs(d, exist_ok=True)
        other = {"a": "web_b", "b": "web"}[inst]
        cluster = ["127.0.0.1:%d" % self.ports[other]] if self.cluster else []
        settings = WEB_SETTINGS.format(
            secret="tismet-demo-%s" % inst, dirs=[self.tismet_dirs[inst]], cluster=cluster,
            storage=self.storage, logdir=os.path.join(self.storage, "log", "webapp-%s" % inst),
            index=os.path.join(self.storage, "index-%s" % inst),
            static=os.path.join(self.root, "static"),
            webapp=os.path.join(sys.prefix, "webapp"),
            sqlite=os.path.join(self.storage, "graphite-%s.db" % inst))
        with open(os.path.join(d, "tismet_demo_settings.py"), "w") as f:
            f.write(settings)
        with open(os.path.join(d, "tismet_demo_urls.py"), "w") as f:
            f.write(WEB_URLS)
        os.makedirs(os.path.join(self.storage, "log", "webapp-%s" % inst), exist_ok=True)

    def _web_env(self, inst):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [self._web_dir(inst)] + [p for p in [env.get("PYTHONPATH")] if p])
        env["GRAPHITE_SETTINGS_MODULE"] = "tismet_demo_settings"
        env["DJANGO_SETTINGS_MODULE"] = "graphite.settings"
        return env

    def _carbon_env(self):
        env = dict(os.environ)
        env["GRAPHITE_ROOT"] = self.root
        env["GRAPHITE_CONF_DIR"] = self.conf
        env["GRAPHITE_STORAGE_DIR"] = self.storage
        return env

    # -- processes ---------------------------------------------------------------

    def _spawn(self, args, env, log_name):
        log = open(os.path.join(self.storage, "log", log_name), "ab")
        # cwd: the stack's own directory, so a source checkout's tismet/ (run from
        # the repository) never shadows the installed package
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.root)
        log.close()
        self.procs.append(proc)
        return proc

    def _django(self, inst, *args):
        subprocess.run([sys.executable, "-m", "django"] + list(args), env=self._web_env(inst),
                       check=True, stdout=subprocess.DEVNULL, cwd=self.root)

    def start(self):
        self.write_config()
        os.makedirs(os.path.join(self.storage, "log"), exist_ok=True)
        for inst in self.instances:
            self._django(inst, "migrate", "--run-syncdb", "-v", "0")
        self._django("a", "collectstatic", "--noinput", "-v", "0")
        carbon = os.path.join(BIN, "carbon-cache.py")
        conf = os.path.join(self.conf, "carbon.conf")
        for inst, port in zip(self.instances, ("line", "line_b")):
            proc = self._spawn([sys.executable, carbon, "--config=" + conf, "--instance=" + inst,
                                "--nodaemon", "start"], self._carbon_env(),
                               "carbon-cache-%s.out" % inst)
            wait_port(self.ports[port], proc)
        if self.cluster:
            relay = os.path.join(BIN, "carbon-relay.py")
            proc = self._spawn([sys.executable, relay, "--config=" + conf, "--nodaemon", "start"],
                               self._carbon_env(), "carbon-relay.out")
            wait_port(self.ports["relay_line"], proc)
        for inst, port in zip(self.instances, ("web", "web_b")):
            proc = self._spawn([os.path.join(BIN, "gunicorn"), "--bind", "127.0.0.1:%d" % self.ports[port],
                                "--workers", "2", "--threads", "4", "--timeout", "60",
                                "graphite.wsgi:application"], self._web_env(inst),
                               "graphite-web-%s.out" % inst)
            wait_http("http://127.0.0.1:%d/version" % self.ports[port], proc)
        target = self.ports["relay_line" if self.cluster else "line"]
        if self.interval:
            self._spawn([sys.executable, os.path.join(HERE, "collector.py"), "--port", str(target),
                         "--interval", str(self.interval)], dict(os.environ), "collector.out")

    def describe(self):
        webs = ["http://127.0.0.1:%d" % self.ports[p] for p in ("web", "web_b")[:len(self.instances)]]
        return {
            "root": self.root,
            "cluster": self.cluster,
            "carbon_line_port": self.ports["relay_line" if self.cluster else "line"],
            "carbon_pickle_port": self.ports["relay_pickle" if self.cluster else "pickle"],
            "cache_line_ports": [self.ports[p] for p in ("line", "line_b")[:len(self.instances)]],
            "web": webs,
            "tismet_dirs": [self.tismet_dirs[i] for i in self.instances],
            "pids": [p.pid for p in self.procs],
        }

    def stop(self):
        # graphite-web and the collector first, carbon last so it drains into Tismet
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.time() + 30
        for proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs = []


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="demo-run", help="where configuration, data and logs go")
    ap.add_argument("--cluster", action="store_true", help="relay + two caches + two webapps")
    ap.add_argument("--free-ports", action="store_true", help="pick free ports instead of the usual ones")
    ap.add_argument("--interval", type=float, default=10, help="collector interval in seconds (0: no collector)")
    ap.add_argument("--ready-file", help="write the stack's description (JSON) here once it runs")
    ap.add_argument("--fresh", action="store_true", help="delete --root first")
    args = ap.parse_args(argv)
    if args.fresh and os.path.isdir(args.root):
        shutil.rmtree(args.root)
    stack = Stack(args.root, cluster=args.cluster, free_ports=args.free_ports, interval=args.interval)
    stopping = []

    def on_signal(signum, frame):
        stopping.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start()
        info = stack.describe()
        if args.ready_file:
            with open(args.ready_file + ".tmp", "w") as f:
                json.dump(info, f)
            os.replace(args.ready_file + ".tmp", args.ready_file)
        web = info["web"][0]
        print("\nGraphite on Tismet is running (%s):" % ("cluster of two" if args.cluster else "one node"))
        for url in info["web"]:
            print("  graphite-web   %s/                (composer)" % url)
        print("  dashboard      %s/dashboard/" % web)
        print("  a graph        %s/render?target=demo.*.load.*&from=-1h" % web)
        print("  send metrics   echo \"my.metric 42 $(date +%%s)\" | nc 127.0.0.1 %d"
              % info["carbon_line_port"])
        print("  data           %s" % ", ".join(info["tismet_dirs"]))
        print("  logs           %s" % os.path.join(stack.storage, "log"))
        print("Ctrl-C stops everything.", flush=True)
        while True:
            time.sleep(1)
            for proc in stack.procs:
                if proc.poll() is not None:
                    raise SystemExit("demo: %s exited with code %s; stopping (logs in %s)"
                                     % (" ".join(proc.args[:2]), proc.returncode,
                                        os.path.join(stack.storage, "log")))
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
