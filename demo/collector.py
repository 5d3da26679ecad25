"""Send this machine's figures to carbon over the plaintext protocol, as
collectd or Diamond would: CPU, memory, load, disk and network every
``--interval`` seconds, plus a few tagged series.

    python demo/collector.py --port 2003 [--interval 10] [--prefix demo]

Names: ``<prefix>.<host>.cpu.{user,system,idle,iowait}`` (percent),
``.memory.{total,available,used}`` (bytes), ``.load.{1min,5min,15min}``,
``.disk.root.{used,free}`` (bytes), ``.network.<iface>.{rx,tx}`` (bytes,
counters), and tagged ``cpu.percent;host=<host>;mode=<mode>`` and
``load.avg;host=<host>;period=<period>``.
"""
import argparse
import os
import socket
import sys
import time


def cpu_times():
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, idle, iowait = (int(x) for x in fields[:5])
    return {"user": user + nice, "system": system, "idle": idle, "iowait": iowait}


def memory():
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":", 1)
            info[key] = int(value.split()[0]) * 1024
    total, available = info["MemTotal"], info.get("MemAvailable", info["MemFree"])
    return {"total": total, "available": available, "used": total - available}


def network():
    out = {}
    with open("/proc/net/dev") as f:
        for line in f.readlines()[2:]:
            iface, data = line.split(":", 1)
            fields = data.split()
            out[iface.strip()] = {"rx": int(fields[0]), "tx": int(fields[8])}
    return out


def sample(prefix, host, previous_cpu):
    now = int(time.time())
    lines = []

    def put(name, value):
        lines.append("%s %s %d" % (name, value, now))

    cpu = cpu_times()
    if previous_cpu:
        delta = {k: cpu[k] - previous_cpu[k] for k in cpu}
        total = sum(delta.values()) or 1
        for mode, ticks in delta.items():
            pct = round(100.0 * ticks / total, 2)
            put("%s.%s.cpu.%s" % (prefix, host, mode), pct)
            put("cpu.percent;host=%s;mode=%s" % (host, mode), pct)
    for key, value in memory().items():
        put("%s.%s.memory.%s" % (prefix, host, key), value)
    for period, value in zip(("1min", "5min", "15min"), os.getloadavg()):
        put("%s.%s.load.%s" % (prefix, host, period), round(value, 2))
        put("load.avg;host=%s;period=%s" % (host, period), round(value, 2))
    st = os.statvfs("/")
    put("%s.%s.disk.root.free" % (prefix, host), st.f_bavail * st.f_frsize)
    put("%s.%s.disk.root.used" % (prefix, host), (st.f_blocks - st.f_bfree) * st.f_frsize)
    for iface, counters in network().items():
        for key, value in counters.items():
            put("%s.%s.network.%s.%s" % (prefix, host, iface.replace(".", "_"), key), value)
    return lines, cpu


def main(argv=None):
    ap = argparse.ArgumentParser(description="send this machine's figures to carbon")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=2003)
    ap.add_argument("--interval", type=float, default=10)
    ap.add_argument("--prefix", default="demo")
    args = ap.parse_args(argv)
    host = socket.gethostname().split(".")[0].replace(" ", "_") or "localhost"
    previous = None
    sock = None
    while True:
        lines, previous = sample(args.prefix, host, previous)
        try:
            if sock is None:
                sock = socket.create_connection((args.host, args.port), timeout=10)
            sock.sendall(("\n".join(lines) + "\n").encode())
        except OSError as e:
            print("collector: cannot send to %s:%d: %s" % (args.host, args.port, e),
                  file=sys.stderr, flush=True)
            sock = None
        time.sleep(args.interval)


if __name__ == "__main__":
    main()
