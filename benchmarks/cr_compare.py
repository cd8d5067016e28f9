"""Kill rates of two cosmic-ray sessions over the same code: the suite before, and the tests added since.

    python benchmarks/cr_compare.py BEFORE.sqlite AFTER.sqlite [--survivors]

BEFORE ran the older test files on every mutant; AFTER ran only the new test files (on the same source,
so the mutants are the same: matched by file, operator and occurrence). A mutant counts as killed after
when either killed it (the old tests are still in the suite). Only mutants with a result in BEFORE, and
for those BEFORE did not kill a result in AFTER, are counted; skipped ones (``cr_focus.py``) are not.
Prints mutants / killed before / killed after per file and function; ``--survivors`` lists the mutants
no test kills, each as its file, line and operator.
"""

from __future__ import annotations

import argparse
import sqlite3
from collections import defaultdict

Key = tuple[str, str, int]


def outcomes(path: str) -> dict[Key, tuple[str, int, str]]:
    """{(file, operator, occurrence): (test outcome, line, function)} of the mutants that ran."""
    con = sqlite3.connect(path)
    rows = con.execute(
        "SELECT s.module_path, s.operator_name, s.occurrence, s.start_pos_row, s.definition_name, "
        "r.worker_outcome, r.test_outcome FROM mutation_specs s JOIN work_results r "
        "ON s.job_id = r.job_id"
    ).fetchall()
    con.close()
    out = {}
    for module, op, occ, row, name, worker, test in rows:
        if str(worker).lower() == "skipped":
            continue
        killed = str(worker).lower() != "normal" or str(test).lower() != "survived"
        out[(module, op, occ)] = ("killed" if killed else "survived", row, name)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--survivors", action="store_true", help="list the mutants that survive both")
    args = ap.parse_args(argv)
    before, after = outcomes(args.before), outcomes(args.after)
    table: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    left = []
    for key, (state, row, name) in sorted(before.items(), key=lambda kv: (kv[0][0], kv[1][1])):
        if state != "killed" and key not in after:
            continue  # not run with the new tests yet
        killed_after = state == "killed" or after[key][0] == "killed"
        counts = table[(key[0].rsplit("/", 1)[-1], name)]
        counts[0] += 1
        counts[1] += state == "killed"
        counts[2] += killed_after
        if not killed_after:
            left.append((key[0].rsplit("/", 1)[-1], row, key[1], name))
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    print(f"{'file:function':48s} {'mutants':>7s} {'before':>7s} {'after':>7s}")
    for (module, name), c in sorted(table.items()):
        print(f"{module + ':' + name:48s} {c[0]:7d} {c[1]:7d} {c[2]:7d}")
        for i in range(3):
            totals[module][i] += c[i]
    for module, c in sorted(totals.items()):
        print(
            f"{module + ' (all)':48s} {c[0]:7d} {c[1]:7d} {c[2]:7d}   "
            f"{100 * c[1] / c[0]:.0f}% -> {100 * c[2] / c[0]:.0f}%"
        )
    if args.survivors:
        for module, row, op, name in left:
            print(f"survives: {module}:{row} {name} {op}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
