"""Summarise the JSON tally of tests/test_faults.py (TISMET_FAULT_REPORT) for RELIABILITY.md.

    TISMET_FAULT_REPORT=/tmp/faults.json pytest tests/test_faults.py
    python tools/fault_report.py /tmp/faults.json
"""
import collections
import json
import sys


def main(path):
    with open(path) as f:
        data = json.load(f)
    cases = data["cases"]
    fired = collections.Counter()
    by_kind_mode = collections.Counter()
    by_phase = collections.Counter()
    for key, n in cases.items():
        if key.startswith("fired:"):
            _, kind, mode, phase = key.split(":")
            fired[kind] += n
            by_kind_mode[(kind, mode)] += n
            by_phase[phase] += n
    modes = ["sync", "group", "none"]
    print("| fault kind | sync | group | none | total |")
    print("|---|---|---|---|---|")
    for kind in sorted(fired):
        row = [by_kind_mode[(kind, m)] for m in modes]
        print("| %s | %s | %d |" % (kind, " | ".join(map(str, row)), sum(row)))
    total = [sum(by_kind_mode[(k, m)] for k in fired) for m in modes]
    print("| **all** | %s | **%d** |" % (" | ".join(map(str, total)), sum(total)))
    print()
    print("| phase | faults |")
    print("|---|---|")
    for phase, n in sorted(by_phase.items()):
        print("| %s | %d |" % (phase, n))
    print()
    for key in sorted(cases):
        if key.startswith(("outcome:", "power_cuts", "disk_full")):
            print("- %s: %d" % (key, cases[key]))
    for key, n in sorted(data["points"].items()):
        print("- points %s: %d" % (key, n))


if __name__ == "__main__":
    main(sys.argv[1])
