"""A writer process for the admin tests (not a test module).

    python admin_writer.py DB_DIR NAME [NAME ...]

Opens DB_DIR as its writer, serves the admin channel (tismet.admin.AdminServer)
and writes one point per second-slot to each NAME continuously (through the
server's gate, as the carbon plugin does), the value being a counter, until
its stdin closes; then stops the server, closes the database and prints one
JSON line: {"writes": n, "errors": [...], "points": {name: [[ts, value], ...]}}
(the last value written in each second, i.e. what the finest archive must hold).
Prints "ready" once the channel is up.  TISMET_ADMIN_CRASH_AT /
TISMET_ADMIN_SLEEP_AT (tismet.admin._hook) act inside this process.
"""
import json
import sys
import threading
import time

import tismet
from tismet import admin


def main():
    path, names = sys.argv[1], sys.argv[2:]
    db = tismet.Database(path)
    server = admin.AdminServer(db, path, log=lambda m: print("log: " + m, file=sys.stderr,
                                                             flush=True)).start()
    stop = threading.Event()
    result = {"writes": 0, "errors": [], "points": {n: {} for n in names}}

    def writer():
        counter = 0
        while not stop.is_set():
            for name in names:
                counter += 1
                ts = int(time.time())
                server.gate.enter(name)
                try:
                    db.update_many(name, [(ts, float(counter))])
                    result["points"][name][ts] = float(counter)
                    result["writes"] += 1
                except Exception as e:    # reported, the test fails on any
                    result["errors"].append("%s: %s: %s" % (name, type(e).__name__, e))
                finally:
                    server.gate.leave()
            time.sleep(0.004)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    print("ready", flush=True)
    sys.stdin.read()
    stop.set()
    t.join(10)
    server.stop()
    db.close()
    result["points"] = {n: sorted(p.items()) for n, p in result["points"].items()}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
