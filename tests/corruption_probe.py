"""Helper of tests/test_corruption_matrix.py (run as a script, so that a crash
of the engine is a failed subprocess, not a dead test runner).

    python corruption_probe.py build DBDIR MODEL_JSON
        make the database every case starts from: metrics written and one
        deleted before a checkpoint, more writes after it, then the process
        ends with os._exit (as a kill -9 would: records after the checkpoint,
        dirty pages); MODEL_JSON gets {name: {t: value}} of what it holds
    python corruption_probe.py probe DBDIR MODEL_JSON
        open it read-only, then as the writer (recovery), and read everything
        each time; print one JSON line: per phase the open's outcome, the
        errors met (class, file, offset), the values that differ from the
        model (never allowed) and those missing, and check()'s problems
"""

import json
import os
import sys

import tismet

NOW = 1_700_000_000
ARCHIVES = [(10, 360), (60, 1440)]


def build(dbdir, model_path):
    model = {}
    db = tismet.Database(dbdir, durability="sync")

    def write(name, n, t0, base, step):
        pts = [(t0 + 10 * i, round(base + step * i, 6)) for i in range(n)]
        db.update_many(name, pts, now=NOW)
        model.setdefault(name, {}).update({int(t): v for t, v in pts})

    for i, name in enumerate(["a.b.c", "a.b.d", "x.y", "cpu;dc=east;host=a", "gone.soon"]):
        db.create(name, ARCHIVES, 0.5, ["average", "sum", "max", "last", "min"][i])
        model[name] = {}
    write("a.b.c", 340, NOW - 3400, 12.34, 0.01)
    write("a.b.d", 200, NOW - 2000, 7.0, 0.0)
    write("x.y", 150, NOW - 1500, 1e6, 3.0)
    write("cpu;dc=east;host=a", 50, NOW - 500, 0.1, 0.37)
    write("gone.soon", 10, NOW - 100, 1.0, 1.0)
    db.delete("gone.soon")
    del model["gone.soon"]
    db.checkpoint()
    # what the page file holds: a reader that finds no hot file (a copied directory, a
    # reboot) sees this until a writer replays the log (native/DESIGN.md I14)
    with open(model_path + ".ckpt", "w") as f:
        json.dump(model, f)
    db.create("late.one", ARCHIVES, 0.0, "sum")
    model["late.one"] = {}
    write("late.one", 120, NOW - 1200, 3.0, 0.5)
    write("a.b.c", 20, NOW - 200, 99.0, 0.25)
    with open(model_path, "w") as f:
        json.dump(model, f)
    os._exit(0)        # no close: the files as a kill -9 leaves them


def error_of(e):
    return {"class": type(e).__name__, "file": getattr(e, "file", None),
            "offset": getattr(e, "offset", None), "message": str(e)[:300]}


def read_all(db, model, out, at_checkpoint, older=None):
    """older: the model at the last checkpoint, which a reader before recovery may see
    instead (values of either; points missing only if the checkpoint lacked them too)."""
    names = sorted(model)
    try:
        found = {n for n, leaf in db.find("**") if leaf}
        found |= {n for n in names if ";" in n and db.exists(n)}
    except tismet.TismetError as e:
        out["errors"].append(error_of(e))
        found = set()
    out["missing_names"] = sorted(set(names) - found)
    out["extra_names"] = sorted(found - set(names))
    # the finest archive (3600 s) holds every point written
    results = db.fetch_many(names, NOW - 3599, NOW, now=NOW, on_error="return")
    for name, r in zip(names, results):
        if isinstance(r, Exception):
            out["errors"].append(error_of(r))
            continue
        got = {}
        if r is not None:
            (start, _end, step), values = r
            got = {start + i * step: v for i, v in enumerate(values) if v is not None}
        want = {int(t): v for t, v in model[name].items() if int(t) > NOW - 3600}
        old = {int(t): v for t, v in (older or {}).get(name, {}).items() if int(t) > NOW - 3600}
        ckpt = {int(t): v for t, v in at_checkpoint.get(name, {}).items() if int(t) > NOW - 3600}
        missing = 0
        for t, v in got.items():
            if want.get(t) == v:
                continue
            if ckpt.get(t) == v:
                # an older value (written, then overwritten after the checkpoint): the
                # newer one is lost (a reader before recovery may see it legitimately)
                if older is None:
                    missing += 1
                continue
            out["wrong"].append([name, t, v, want.get(t)])
        need = want if older is None else old
        missing += sum(1 for t in need if t not in got)
        out["missing_points"] += missing
        if missing:
            out.setdefault("missing_by_name", {})[name] = missing
    try:
        out["check"] = db.check()
    except tismet.TismetError as e:
        out["errors"].append(error_of(e))
        out["check"] = ["check raised: %s" % e]


def probe(dbdir, model_path):
    with open(model_path) as f:
        model = json.load(f)
    with open(model_path + ".ckpt") as f:
        at_checkpoint = json.load(f)
    result = {}
    for phase, kw in (("reader", {"readonly": True}), ("writer", {"durability": "none"})):
        out = {"open": "ok", "errors": [], "wrong": [], "missing_points": 0, "check": []}
        result[phase] = out
        try:
            db = tismet.Database(dbdir, **kw)
        except tismet.TismetError as e:
            out["open"] = error_of(e)
            continue
        try:
            read_all(db, model, out, at_checkpoint,
                     at_checkpoint if phase == "reader" else None)
        except tismet.TismetError as e:
            out["errors"].append(error_of(e))
        finally:
            try:
                db.close()
            except tismet.TismetError as e:
                out["errors"].append(error_of(e))
    print(json.dumps(result))


def repaired(dbdir, model_path):
    from tismet import repair
    with open(model_path) as f:
        model = json.load(f)
    with open(model_path + ".ckpt") as f:
        at_checkpoint = json.load(f)
    out = {"open": "ok", "errors": [], "wrong": [], "missing_points": 0, "check": []}
    try:
        db = tismet.Database(dbdir, durability="none")
    except tismet.TismetError as e:
        out["open"] = error_of(e)
    else:
        with db:
            read_all(db, model, out, at_checkpoint)
    out["deep"] = repair.deep_check(dbdir)
    print(json.dumps(out))


if __name__ == "__main__":
    cmd, dbdir, model_path = sys.argv[1:4]
    {"build": build, "probe": probe, "repaired": repaired}[cmd](dbdir, model_path)
