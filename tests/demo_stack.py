"""Start and stop the demo stack (../demo/run.py) for end-to-end tests.

Not a test module. Used by test_demo.py and test_browser.py:

    with DemoStack(tmp_path / "demo", cluster=False, interval=1) as stack:
        stack.info["web"][0]  # graphite-web base URL
        stack.send_lines(["a.b 1 1700000000"])

``start()`` runs ``demo/run.py --free-ports --root DIR --ready-file F`` with this
interpreter and waits for F (the demo writes it once carbon and graphite-web answer); on
timeout or an early exit it fails with the demo's output and the logs under
``<root>/storage/log``. ``stop()`` sends SIGTERM to the demo, which stops its children, waits
for it, then checks that no process it started survives (each child leads its own process
group, so gunicorn workers are found through their group): survivors are killed with SIGKILL
by pid and the stop fails.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.error
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
RUN = os.path.normpath(os.path.join(HERE, "..", "demo", "run.py"))
ROOT = os.path.dirname(HERE)

READY_TIMEOUT = 90
STOP_TIMEOUT = 60  # run.py gives its children 30 s before SIGKILL


def _proc_stat(pid):
    """(state, pgid, sid, starttime) of a live process, or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); pgrp is field 5, session 6, starttime 22
    return fields[0], int(fields[2]), int(fields[3]), int(fields[19])


def _alive(pid, starttime=None):
    st = _proc_stat(pid)
    if st is None or st[0] in ("Z", "X"):
        return False
    return starttime is None or st[3] == starttime


def _members_of_groups(pgids):
    """Live (non-zombie) pids whose process group is one of pgids."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = _proc_stat(int(name))
        if st and st[0] not in ("Z", "X") and st[1] in pgids:
            found.append(int(name))
    return found


def _tail(path, limit=4000):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return "<%s>" % e
    text = data.decode("utf-8", "replace")
    return text if len(text) <= limit else "...\n" + text[-limit:]


class DemoStack:
    def __init__(self, root, cluster=False, interval=1.0, ready_timeout=READY_TIMEOUT):
        self.root = str(root)
        self.cluster = cluster
        self.interval = interval
        self.ready_timeout = ready_timeout
        self.ready_file = os.path.join(self.root, "ready.json")
        self.out_path = os.path.join(self.root, "demo.out")
        self.proc = None
        self.info = None
        self._children = {}  # pid -> starttime, recorded once ready

    # -- lifecycle ----------------------------------------------------------------

    def start(self):
        os.makedirs(self.root, exist_ok=True)
        args = [sys.executable, RUN, "--root", self.root, "--free-ports",
                "--interval", str(self.interval), "--ready-file", self.ready_file]
        if self.cluster:
            args.append("--cluster")
        env = dict(os.environ)
        # the demo's children import tismet: make the tests' tismet importable for them too
        import tismet
        pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(tismet.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(
            [pkg_parent] + [p for p in [env.get("PYTHONPATH")] if p])
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.out_path, "ab") as out:
            # its own session: a signal meant for pytest's group does not reach it; stop() does
            # from the repository root, as `make demo` runs it (a source tismet/ there
            # must not shadow the installed one in the demo's processes)
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL,
                                         cwd=os.path.dirname(os.path.dirname(RUN)),
                                         env=env, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop(check=False)
            raise
        return self

    def _wait_ready(self):
        deadline = time.time() + self.ready_timeout
        while time.time() < deadline:
            if os.path.exists(self.ready_file):
                with open(self.ready_file) as f:
                    self.info = json.load(f)
                for pid in self.info["pids"]:
                    st = _proc_stat(pid)
                    if st is not None:
                        self._children[pid] = st[3]
                return
            if self.proc.poll() is not None:
                pytest.fail("demo/run.py exited with code %s before it was ready\n%s"
                            % (self.proc.returncode, self.diagnostics()), pytrace=False)
            time.sleep(0.2)
        pytest.fail("demo/run.py not ready after %ds\n%s" % (self.ready_timeout, self.diagnostics()),
                    pytrace=False)

    def diagnostics(self):
        parts = ["--- demo output (%s)\n%s" % (self.out_path, _tail(self.out_path))]
        logdir = os.path.join(self.root, "storage", "log")
        for dirpath, _, files in sorted(os.walk(logdir)):
            for name in sorted(files):
                path = os.path.join(dirpath, name)
                parts.append("--- %s\n%s" % (path, _tail(path, 3000)))
        return "\n".join(parts)

    def stop(self, check=True):
        """SIGTERM the demo, wait for it, make sure none of its children survived."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        problems = []
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                problems.append("demo/run.py still running %ds after SIGTERM" % STOP_TIMEOUT)
                proc.kill()
                proc.wait()
        elif check:
            problems.append("demo/run.py had exited (code %s) before the teardown"
                            % proc.returncode)
        # the demo's own group (nothing should be in it now) and each child's group
        pgids = {proc.pid} | set(self._children)
        survivors = set(_members_of_groups(pgids))
        survivors |= {pid for pid, start in self._children.items() if _alive(pid, start)}
        survivors.discard(os.getpid())
        if survivors:
            desc = []
            for pid in sorted(survivors):
                try:
                    with open("/proc/%d/cmdline" % pid, "rb") as f:
                        desc.append("%d: %s" % (pid, f.read().replace(b"\0", b" ").decode()))
                except OSError:
                    desc.append("%d" % pid)
            for pid in survivors:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            problems.append("processes survived the demo's stop (killed with SIGKILL):\n  "
                            + "\n  ".join(desc))
        if problems and check:
            pytest.fail("\n".join(problems) + "\n" + self.diagnostics(), pytrace=False)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop(check=exc[0] is None)

    # -- helpers ---------------------------------------------------------------------

    @property
    def web(self):
        return self.info["web"]

    def send_lines(self, lines, port=None):
        """Send plaintext lines ("name value timestamp") to carbon (the relay in a cluster)."""
        port = port or self.info["carbon_line_port"]
        data = ("\n".join(lines) + "\n").encode()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            # wait for carbon to close its side or a short while: the data is queued either way
            s.settimeout(2)
            try:
                s.recv(1)
            except OSError:
                pass

    def get(self, path, base=None, params=None, timeout=30):
        """GET base+path(?params); returns (status, headers, body bytes)."""
        url = (base or self.web[0]) + path
        if params:
            url += ("&" if "?" in url else "?") + urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def get_json(self, path, base=None, params=None, timeout=30):
        status, _, body = self.get(path, base, params, timeout)
        if status != 200:
            raise AssertionError("GET %s %s -> %d: %s" % (path, params, status, body[:2000]))
        return json.loads(body)


def poll(fn, timeout, interval=0.5, what="condition"):
    """Call fn until it returns a true value; return it, or fail with the last value/error."""
    deadline = time.time() + timeout
    last = None
    while True:
        try:
            last = fn()
            if last:
                return last
        except (AssertionError, OSError, ValueError) as e:
            last = e
        if time.time() >= deadline:
            raise AssertionError("%s not met after %ss; last: %r" % (what, timeout, last))
        time.sleep(interval)
