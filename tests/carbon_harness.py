"""A small harness that runs the real carbon daemons on 127.0.0.1 (not a test module).

    from carbon_harness import Carbon, wait_for
    c = Carbon(tmp_path / "graphite", database="tismet")
    c.start()                      # daemon mode (what users run); c.start(daemon=False) = --nodaemon
    c.send_lines(["a.b 1 %d" % ts])
    c.send_pickle([("a.b", (ts, 1.0))])
    c.stop()                       # SIGTERM, waits for the exit; c.kill() = SIGKILL
    c.logs()                       # every log line carbon wrote (console, creates, listener...)
    c.close()                      # always (finally / fixture): kills what is still running

Layout of a GRAPHITE_ROOT made by `Carbon`:
    <root>/conf/carbon.conf, storage-schemas.conf, storage-aggregation.conf,
    aggregation-rules.conf (carbon-aggregator-cache), <root>/storage/ (STORAGE_DIR: pid file,
    log/<program>/<program>-<instance>/*.log in daemon mode, whisper/, tismet/),
    <root>/<program>-<instance>.out (the launcher's output; carbon's log in --nodaemon mode).

Only processes started here are ever signalled, by the pid carbon wrote (daemon mode) or the
Popen (foreground mode); each is checked to still be a carbon process before a signal.
"""

import errno
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time

HOST = "127.0.0.1"

# Reasonable defaults for tests: carbon's own metrics under a short retention first,
# then everything else at 1 s for 10 minutes plus coarser archives.
DEFAULT_SCHEMAS = """\
[carbon]
pattern = ^carbon\\.
retentions = 1s:10m,1m:1d

[default]
pattern = .*
retentions = 1s:10m,1m:1h,10m:1d
"""

DEFAULT_AGGREGATION = ""


class CarbonError(AssertionError):
    pass


def wait_for(predicate, timeout=10.0, interval=0.05, message=None):
    """Call predicate() until it returns a truthy value, which is returned; raise
    CarbonError (an AssertionError) after `timeout` seconds. Exceptions from predicate
    propagate (wrap the predicate if some are expected)."""
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() >= deadline:
            desc = message() if callable(message) else message
            raise CarbonError("timed out after %.1fs waiting for %s" % (
                timeout, desc or getattr(predicate, "__name__", "a condition")))
        time.sleep(interval)


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def carbon_script(program="carbon-cache"):
    """The stock launcher next to the interpreter (the virtualenv's bin/)."""
    return os.path.join(os.path.dirname(sys.executable), program + ".py")


def carbon_available():
    try:
        import carbon  # noqa: F401
        import twisted  # noqa: F401
    except ImportError:
        return False
    return os.path.exists(carbon_script())


def process_alive(pid):
    """True while pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # state is the field after the parenthesised command name
    return stat[stat.rfind(")") + 2] not in "ZX"


def proc_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def cpu_seconds(pid):
    """utime + stime of pid (all its threads), in seconds, from /proc/<pid>/stat."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def rss_bytes(pid, peak=False):
    """Current (VmRSS) or peak (VmHWM) resident set size of pid, in bytes."""
    key = "VmHWM:" if peak else "VmRSS:"
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def _conf_value(v):
    if v is True:
        return "True"
    if v is False:
        return "False"
    if v == float("inf"):
        return "inf"
    return str(v)


class Carbon:
    """One carbon daemon (carbon-cache by default) in its own GRAPHITE_ROOT.

    `settings` are extra carbon.conf lines for the program's section (e.g.
    {"TISMET_DURABILITY": "sync", "CARBON_METRIC_INTERVAL": 2}); `schemas`, `aggregation`
    and `aggregation_rules` are the text of storage-schemas.conf, storage-aggregation.conf and
    aggregation-rules.conf. The files are (re)written by `write_config()`, called by the
    constructor; ports are picked once, so a restart listens on the same ports.
    """

    def __init__(self, root, *, program="carbon-cache", database="tismet", instance="a",
                 settings=None, schemas=DEFAULT_SCHEMAS, aggregation=DEFAULT_AGGREGATION,
                 aggregation_rules="", metric_interval=60, env=None):
        self.root = os.path.abspath(str(root))
        self.program = program
        self.database = database
        self.instance = instance
        self.extra = dict(settings or {})
        self.schemas = schemas
        self.aggregation = aggregation
        self.aggregation_rules = aggregation_rules
        self.metric_interval = metric_interval
        self.extra_env = dict(env or {})
        self.conf_dir = os.path.join(self.root, "conf")
        self.conf = os.path.join(self.conf_dir, "carbon.conf")
        self.storage_dir = os.path.join(self.root, "storage")
        self.whisper_dir = os.path.join(self.storage_dir, "whisper")
        self.log_dir = os.path.join(self.storage_dir, "log", program,
                                    "%s-%s" % (program, instance))
        self.pidfile = os.path.join(self.storage_dir, "%s-%s.pid" % (program, instance))
        self.out_path = os.path.join(self.root, "%s-%s.out" % (program, instance))
        self.line_port = free_port()
        self.pickle_port = free_port()
        self.query_port = free_port()
        self.proc = None        # the Popen (foreground mode)
        self.pid = None         # the running daemon's pid
        self.daemon = None
        self.launcher_output = ""
        os.makedirs(self.conf_dir, exist_ok=True)
        os.makedirs(self.storage_dir, exist_ok=True)
        self.write_config()

    # ------------------------------------------------------------------ configuration
    @property
    def section(self):
        return self.program[len("carbon-"):]

    @property
    def tismet_dir(self):
        """Where the plugin keeps its database: TISMET_DIR, or its documented default."""
        if "TISMET_DIR" in self.extra:
            return str(self.extra["TISMET_DIR"])
        if self.instance == "a":
            return os.path.join(self.storage_dir, "tismet")
        return os.path.join(self.storage_dir, "tismet-%s" % self.instance)

    def write_config(self):
        lines = ["[%s]" % self.section]
        base = {
            "STORAGE_DIR": self.storage_dir,
            "LOCAL_DATA_DIR": self.whisper_dir,
            "DATABASE": self.database,
            "LINE_RECEIVER_INTERFACE": HOST,
            "LINE_RECEIVER_PORT": self.line_port,
            "PICKLE_RECEIVER_INTERFACE": HOST,
            "PICKLE_RECEIVER_PORT": self.pickle_port,
            "CACHE_QUERY_INTERFACE": HOST,
            "CACHE_QUERY_PORT": self.query_port,
            "ENABLE_UDP_LISTENER": False,
            "USE_INSECURE_UNPICKLER": False,
            "LOG_UPDATES": False,
            "LOG_CACHE_HITS": False,
            "CARBON_METRIC_INTERVAL": self.metric_interval,
            "MAX_CACHE_SIZE": float("inf"),
            "MAX_UPDATES_PER_SECOND": float("inf"),
            "MAX_CREATES_PER_MINUTE": float("inf"),
            "GRAPHITE_URL": "http://127.0.0.1:%d" % free_port(),   # nobody listens there
        }
        base.update(self.extra)
        for k, v in base.items():
            if v is not None:
                lines.append("%s = %s" % (k, _conf_value(v)))
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(os.path.join(self.conf_dir, "storage-schemas.conf"), "w") as f:
            f.write(self.schemas)
        with open(os.path.join(self.conf_dir, "storage-aggregation.conf"), "w") as f:
            f.write(self.aggregation)
        with open(os.path.join(self.conf_dir, "aggregation-rules.conf"), "w") as f:
            f.write(self.aggregation_rules)

    def env(self):
        env = dict(os.environ)
        for k in ("GRAPHITE_CONF_DIR", "GRAPHITE_STORAGE_DIR"):
            env.pop(k, None)
        env["GRAPHITE_ROOT"] = self.root
        env["PYTHONUNBUFFERED"] = "1"
        # the sys.path entries this process found tismet (and the dropin) in, first
        parts = []
        try:
            import tismet
            parts.append(os.path.dirname(os.path.dirname(os.path.abspath(tismet.__file__))))
        except ImportError:
            pass
        if env.get("PYTHONPATH"):
            parts.append(env["PYTHONPATH"])
        if parts:
            env["PYTHONPATH"] = os.pathsep.join(parts)
        env.update(self.extra_env)
        return env

    def command(self, action, daemon=True, debug=False):
        cmd = [sys.executable, carbon_script(self.program), "--config=%s" % self.conf,
               "--instance=%s" % self.instance]
        if debug:
            cmd.append("--debug")          # foreground, debug logging to stdout
        elif not daemon:
            cmd.append("--nodaemon")
        cmd.append(action)
        return cmd

    # ------------------------------------------------------------------ life cycle
    def start(self, daemon=True, timeout=60, wait_ports=True, debug=False):
        """Start the daemon; return once its line port accepts connections.
        daemon=False runs it in the foreground (`--nodaemon`, or `--debug` with debug=True)
        as our child, its log going to self.out_path."""
        if self.running():
            raise CarbonError("%s already running (pid %s)" % (self.program, self.pid))
        if debug:
            daemon = False
        self.daemon = daemon
        self.pid = None
        self.proc = None
        if daemon:
            r = subprocess.run(self.command("start", True), env=self.env(), cwd=self.root,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               timeout=timeout)
            self.launcher_output = r.stdout.decode("utf-8", "replace")
            with open(self.out_path, "a") as f:
                f.write(self.launcher_output)
            if r.returncode != 0:
                raise CarbonError("%s start exited %d:\n%s\n%s" % (
                    self.program, r.returncode, self.launcher_output, self.logs()[-4000:]))
            self.pid = wait_for(self._read_pidfile, timeout,
                                message="the pid file %s" % self.pidfile)
        else:
            out = open(self.out_path, "ab")
            try:
                self.proc = subprocess.Popen(self.command("start", False, debug),
                                             env=self.env(),
                                             cwd=self.root, stdout=out,
                                             stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)
            finally:
                out.close()
            self.pid = self.proc.pid
        if wait_ports:
            def up():
                if not self.running():
                    raise CarbonError("%s exited during start-up:\n%s" % (
                        self.program, self.logs()[-4000:]))
                return port_open(self.line_port)
            wait_for(up, timeout, interval=0.1, message="%s line port" % self.program)
        return self.pid

    def start_expect_failure(self, daemon=True, timeout=60):
        """Run `start` expecting carbon to refuse; return (returncode, output)."""
        cmd = self.command("start", daemon)
        r = subprocess.run(cmd, env=self.env(), cwd=self.root, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=timeout)
        out = r.stdout.decode("utf-8", "replace")
        pid = self._read_pidfile()
        if pid and process_alive(pid):       # it started after all: do not leave it behind
            self.pid, self.daemon = pid, True
            self.kill()
        return r.returncode, out

    def _read_pidfile(self):
        try:
            with open(self.pidfile) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def running(self):
        if self.proc is not None:
            return self.proc.poll() is None
        return self.pid is not None and process_alive(self.pid) and self._is_ours(self.pid)

    def _is_ours(self, pid):
        cmd = proc_cmdline(pid)
        return self.program in cmd and self.conf in cmd

    def _signal(self, sig):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
        elif self.pid is not None and process_alive(self.pid) and self._is_ours(self.pid):
            os.kill(self.pid, sig)

    def wait_exit(self, timeout=60):
        """Wait until the process is gone; return its exit status when known (foreground)."""
        if self.proc is not None:
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                raise CarbonError("%s (pid %d) still running after %.0fs" % (
                    self.program, self.proc.pid, timeout))
        wait_for(lambda: not (self.pid and process_alive(self.pid)), timeout, interval=0.05,
                 message="%s (pid %s) to exit" % (self.program, self.pid))
        return None

    def stop(self, timeout=60):
        """SIGTERM (what `carbon-cache.py stop` sends) and wait for the exit."""
        self._signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def stop_with_script(self, timeout=60):
        """`carbon-cache.py stop` (reads the pid file, sends SIGTERM); wait for the exit."""
        r = subprocess.run(self.command("stop", True), env=self.env(), cwd=self.root,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        out = r.stdout.decode("utf-8", "replace")
        with open(self.out_path, "a") as f:
            f.write(out)
        if r.returncode != 0:
            raise CarbonError("%s stop exited %d:\n%s" % (self.program, r.returncode, out))
        return self.wait_exit(timeout)

    def kill(self, timeout=30):
        """SIGKILL and wait for the exit."""
        self._signal(signal.SIGKILL)
        return self.wait_exit(timeout)

    def close(self):
        """Cleanup for finally/fixtures: SIGTERM, then SIGKILL if it lingers."""
        try:
            if self.running():
                self._signal(signal.SIGTERM)
                try:
                    self.wait_exit(20)
                except CarbonError:
                    self._signal(signal.SIGKILL)
                    self.wait_exit(10)
        finally:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ logs
    def log_files(self):
        files = []
        if os.path.isdir(self.log_dir):
            files += sorted(os.path.join(self.log_dir, n) for n in os.listdir(self.log_dir))
        if os.path.exists(self.out_path):
            files.append(self.out_path)
        return files

    def logs(self, name=None):
        """Text of carbon's logs (all of them, or only the file called `name`, e.g.
        'console.log'; in --nodaemon mode everything is in the .out file)."""
        parts = []
        for path in self.log_files():
            if name is not None and os.path.basename(path) != name:
                continue
            try:
                with open(path, "rb") as f:
                    parts.append(f.read().decode("utf-8", "replace"))
            except OSError:
                pass
        return "".join(parts)

    # ------------------------------------------------------------------ sending
    def connect(self, port=None, timeout=10):
        s = socket.create_connection((HOST, port or self.line_port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def send_lines(self, lines, port=None):
        """Send plaintext lines (str or bytes; a newline is added) on one connection."""
        data = b"".join((l if isinstance(l, bytes) else l.encode("utf-8")) + b"\n"
                        for l in lines)
        self.send_raw(data, port or self.line_port)

    def send_raw(self, data, port=None):
        with self.connect(port or self.line_port) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            # carbon never answers; wait for its close or a short time (lets it read all)
            s.settimeout(0.2)
            try:
                s.recv(1)
            except (socket.timeout, OSError):
                pass

    def cache_request(self, request, timeout=10):
        """One request on carbon's cache-query port (the protocol graphite-web's carbonlink
        speaks): {'type': 'cache-query', 'metric': m} | {'type': 'get-metadata', 'metric':
        m, 'key': k} | {'type': 'set-metadata', ..., 'value': v}; returns carbon's dict."""
        req = pickle.dumps(request, protocol=2)
        with self.connect(self.query_port, timeout) as s:
            s.sendall(struct.pack("!L", len(req)) + req)
            size = struct.unpack("!L", _recv_exactly(s, 4))[0]
            return pickle.loads(_recv_exactly(s, size))

    def cache_query(self, metric, timeout=10):
        """The datapoints carbon holds in its cache for `metric` (its cache-query port)."""
        return self.cache_request({"type": "cache-query", "metric": metric},
                                  timeout)["datapoints"]

    def send_signal(self, sig):
        """Send sig to the daemon (only if it is still our carbon process)."""
        self._signal(sig)

    def send_pickle(self, points, batch=500):
        """Send [(name, (timestamp, value)), ...] with carbon's pickle protocol
        (4-byte big-endian length + pickle), `batch` points per message, one connection."""
        with self.connect(self.pickle_port) as s:
            for i in range(0, len(points), batch):
                s.sendall(pickle_message(points[i:i + batch]))
            s.shutdown(socket.SHUT_WR)
            s.settimeout(0.2)
            try:
                s.recv(1)
            except (socket.timeout, OSError):
                pass


def _recv_exactly(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise CarbonError("connection closed after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return buf


def pickle_message(points):
    payload = pickle.dumps(list(points), protocol=2)
    return struct.pack("!L", len(payload)) + payload


def port_open(port, host=HOST):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def open_reader(path, timeout=30):
    """A read-only tismet.Database on path, waiting until carbon has created it."""
    import tismet

    def attempt():
        try:
            return tismet.Database(str(path), readonly=True)
        except tismet.DatabaseNotFound:
            return None
        except tismet.StorageError as e:
            # the writer is still creating the directory's files (a read-only open racing
            # the very first writable open can see the directory before its catalog)
            if getattr(e, "errno", None) == errno.ENOENT:
                return None
            raise
    return wait_for(attempt, timeout, interval=0.1, message="the database at %s" % path)


def agent_prefix(instance="a", program_prefix="carbon"):
    """carbon.agents.<hostname>-<instance> as carbon's instrumentation names it."""
    return "%s.agents.%s-%s" % (program_prefix, socket.gethostname().replace(".", "_"),
                                instance)
