"""Two graphite-web instances under gunicorn, each over its own Tismet shard, peers of each other.

Each instance has its own local_settings (TISMET_DIRS = its shard, CLUSTER_SERVERS = the other,
STORAGE_FINDERS = RemoteFinder + TismetFinder, TAGDB = TismetTagDB); a find or a render through
either one must return the union of both shards, exactly what one in-process graphite-web over
both directories returns. The listening sockets are bound (port 0) by the test and handed to
gunicorn as fd://N, so each instance knows its peer's port before it starts. Servers listen on
127.0.0.1 only and are stopped by pid at teardown, even on failure.
"""

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

pytest.importorskip("graphite")
pytest.importorskip("gunicorn")

import graphite_harness as gh  # noqa: E402
from graphite_harness import HOUR, Series
from tismet_testutil import python, subprocess_env

pytestmark = pytest.mark.timeout(240)

START_TIMEOUT = 90.0


def shard_series(side, split):
    host = {"a": "web01", "b": "web02"}[side]
    s = [Series("servers.%s.cpu.%s" % (host, m)) for m in ("user", "idle")]
    s.append(Series("apps.%s.requests" % side, kind="int", agg="sum", xff=0.0))
    s.append(Series("cpu.load;host=%s1;dc=%s" % (side, {"a": "east", "b": "west"}[side])))
    if side == "a":
        s.append(Series("shared.metric", stop=split))
    else:
        s.append(Series("shared.metric", start=split))
    return s


def _http(port, path, params=None, method="GET", timeout=30):
    data = urllib.parse.urlencode(params or {}, doseq=True)
    url = "http://127.0.0.1:%d%s" % (port, path)
    if method == "GET":
        req = urllib.request.Request(url + ("?" + data if data else ""))
    else:
        req = urllib.request.Request(url, data=data.encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Instance(object):
    def __init__(self, name, directory, sock, shard, peer_port, env):
        self.name = name
        self.dir = directory
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.shard = shard
        self.peer_port = peer_port
        self.env = env
        self.proc = None
        self.log = os.path.join(directory, "gunicorn.log")

    def start(self):
        fd = self.sock.fileno()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [python(), "-m", "gunicorn", "--bind", "fd://%d" % fd, "--workers", "2",
                 "--timeout", "60", "--graceful-timeout", "3", "--log-level", "warning",
                 "graphite.wsgi:application"],
                pass_fds=(fd,), env=self.env, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.dir, start_new_session=True)

    def wait_ready(self, deadline):
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("gunicorn %s exited %s:\n%s" % (self.name, self.proc.returncode,
                                                                   self.tail()))
            try:
                status, _ = _http(self.port, "/version", timeout=5)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("gunicorn %s did not answer in time:\n%s" % (self.name, self.tail()))

    def tail(self):
        try:
            with open(self.log, "rb") as f:
                return f.read()[-4000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()           # the gunicorn master (our child), by pid
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.sock.close()

    def get(self, path, params=None):
        return _http(self.port, path, params)

    def post(self, path, params=None):
        return _http(self.port, path, params, method="POST")


class Cluster(object):
    pass


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    gh.setup_django()
    root = tmp_path_factory.mktemp("cluster")
    now = gh.anchor_now()
    split = now - 12 * HOUR
    shards = {}
    for side in ("a", "b"):
        shards[side] = str(root / ("shard_" + side))
        gh.write_dataset(shard_series(side, split), now, None, shards[side], hours=26)
    socks = {}
    for side in ("a", "b"):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        s.set_inheritable(True)
        socks[side] = s
    instances = []
    try:
        for side, other in (("a", "b"), ("b", "a")):
            d = str(root / ("web_" + side))
            os.makedirs(d)
            module = "cluster_settings_" + side
            gh.write_local_settings(
                d, module, d,
                finders=("graphite.finders.remote.RemoteFinder", "tismet_finder.TismetFinder"),
                tagdb="tismet_finder.TismetTagDB",
                cluster=["127.0.0.1:%d" % socks[other].getsockname()[1]],
                tismet_dirs=[shards[side]])
            env = subprocess_env()
            env["PYTHONPATH"] = gh.pythonpath_for_subprocess(d)
            env["DJANGO_SETTINGS_MODULE"] = "graphite.settings"
            env["GRAPHITE_SETTINGS_MODULE"] = module
            instances.append(Instance(side, d, socks[side], shards[side],
                                      socks[other].getsockname()[1], env))
        # graphite-web's own tables (the find view reads the user profile): migrate once, copy
        first = instances[0]
        out = subprocess.run([python(), "-m", "django", "migrate", "--verbosity", "0"],
                             env=first.env, cwd=first.dir, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=120)
        assert out.returncode == 0, out.stdout.decode()[-3000:]
        shutil.copy(os.path.join(first.dir, "graphite.db"),
                    os.path.join(instances[1].dir, "graphite.db"))
        for inst in instances:
            inst.start()
        deadline = time.time() + START_TIMEOUT
        for inst in instances:
            inst.wait_ready(deadline)
        c = Cluster()
        c.now = now
        c.a, c.b = instances
        c.union = gh.TismetConfig([shards["a"], shards["b"]])   # in process: the reference
        c.names = sorted({s.name for side in "ab" for s in shard_series(side, split)})
        yield c
    finally:
        for inst in instances:
            inst.stop()
        for s in socks.values():
            s.close()


def _json(resp):
    status, body = resp
    assert status == 200, body[:2000]
    return json.loads(body)


@pytest.mark.parametrize("side", ["a", "b"])
def test_find_union(cluster, side):
    inst = getattr(cluster, side)
    got = _json(inst.get("/metrics/find", {"query": "servers.*.cpu.*", "format": "completer"}))
    assert sorted(m["path"] for m in got["metrics"]) == [
        "servers.web01.cpu.idle", "servers.web01.cpu.user",
        "servers.web02.cpu.idle", "servers.web02.cpu.user"]
    got = _json(inst.get("/metrics/find", {"query": "*"}))
    assert sorted(n["id"] for n in got) == ["apps", "servers", "shared"]
    got = _json(inst.post("/metrics/find", {"query": "apps.*"}))     # as Grafana sends it
    assert sorted(n["id"] for n in got) == ["apps.a", "apps.b"]
    got = _json(inst.get("/metrics/expand", {"query": ["**"], "leavesOnly": "1"}))
    assert got["results"] == [n for n in cluster.names if ";" not in n]
    got = _json(inst.get("/metrics/index.json"))
    assert [p for p in got if ";" not in p] == [n for n in cluster.names if ";" not in n]


RENDERS = [
    ["servers.*.cpu.user"],
    ["servers.*.cpu.*", "sumSeries(apps.*.requests)"],
    ["shared.metric"],
    ["seriesByTag('name=cpu.load')"],
    ["aliasByNode(servers.*.cpu.idle, 1)", "groupByTags(seriesByTag('name=cpu.load'), 'sum', 'name')"],
]


@pytest.mark.parametrize("side", ["a", "b"])
@pytest.mark.parametrize("targets", RENDERS, ids=[",".join(t) for t in RENDERS])
def test_render_union(cluster, side, targets):
    c = cluster
    inst = getattr(c, side)
    for lo, hi in [(-1800, 0), (-6 * HOUR, 0), (-26 * HOUR, 0)]:
        params = {"target": targets, "format": "json", "from": str(c.now + lo),
                  "until": str(c.now + hi), "now": str(c.now)}
        expected = c.union.get("/render", params)
        assert expected.status == 200
        got = _json(inst.get("/render", params))
        assert got == expected.json()
        assert got


@pytest.mark.parametrize("side", ["a", "b"])
def test_grafana_render_and_tags_through_peer(cluster, side):
    c = cluster
    inst = getattr(c, side)
    params = {"target": ["aliasSub(servers.*.cpu.user, '(^.*$)', '\\1')"], "format": "json",
              "from": str(c.now - 2 * HOUR), "until": str(c.now), "maxDataPoints": "200"}
    expected = c.union.post("/render", params)
    got = _json(inst.post("/render", params))
    assert got == expected.json() and len(got) == 2
    got = _json(inst.get("/tags/autoComplete/values", {"tag": "host"}))
    assert got == ["a1", "b1"]
    for params in ({"expr": "name=cpu.load"}, {"tagPrefix": "h"}, {}):
        got = _json(inst.get("/tags/autoComplete/tags", params))
        assert got == c.union.get("/tags/autoComplete/tags", params).json()
        assert "host" in got
