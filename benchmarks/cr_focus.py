"""Focus a cosmic-ray session on named functions: every other pending mutant is marked skipped.

    cosmic-ray init CONFIG SESSION.sqlite
    python benchmarks/cr_focus.py SESSION.sqlite anomaly_map.py:location_scores,smooth_in_mask ...
    cosmic-ray exec CONFIG SESSION.sqlite

A mutant is kept when it lies in the body of one of the named functions of a file (the file matched by
its name's ending; nested functions count as their own names). Also skipped, unless ``--all-operators``:

* mutants on a function's signature lines: there they only change annotations, which
  ``from __future__ import annotations`` leaves unevaluated (equivalent mutants);
* arithmetic operators replaced by a bitwise, shift, ``//`` or ``%`` operator (``a * b`` -> ``a << b``):
  on the float tensors of these functions they raise at once, so any test reaching the line kills them and
  they only inflate the count. Bitwise operators of boolean masks (``&``, ``|``) keep all replacements.

``--sample N`` keeps a reproducible random N of the focused mutants (``--seed``; the choice depends only
on the source, so two sessions of the same code keep the same mutants). Prints the kept count per file
and function.
"""

from __future__ import annotations

import argparse
import ast
import random
import sqlite3
from collections import Counter
from pathlib import Path

from cosmic_ray.work_db import use_db
from cosmic_ray.work_item import WorkerOutcome, WorkResult

TRIVIAL = ("FloorDiv", "Mod", "LShift", "RShift", "BitAnd", "BitOr", "BitXor")
BITWISE = ("BitAnd", "BitOr", "BitXor")


def body_rows(path: Path, names: set[str]) -> dict[str, tuple[int, int]]:
    """{function name: (first body row, last row)} for the named functions of a file (1-based rows)."""
    out = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in names:
            out[node.name] = (node.body[0].lineno, node.end_lineno)
    return out


def trivial_operator(operator: str) -> bool:
    if "ReplaceBinaryOperator_" not in operator:
        return False
    old, new = operator.split("ReplaceBinaryOperator_")[1].split("_")
    return new in TRIVIAL and old not in BITWISE


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("session")
    ap.add_argument("targets", nargs="+", help="FILE:func1,func2 (FILE: the module path's ending)")
    ap.add_argument("--root", default=".", help="where the session's module paths are relative to")
    ap.add_argument(
        "--all-operators", action="store_true", help="keep signature and trivial-operator mutants"
    )
    ap.add_argument("--sample", type=int, default=0, help="keep this many of the focused mutants, at random")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    wanted = {t.split(":")[0]: set(t.split(":")[1].split(",")) for t in args.targets}
    con = sqlite3.connect(args.session)
    rows = con.execute(
        "SELECT job_id, module_path, operator_name, occurrence, start_pos_row, definition_name "
        "FROM mutation_specs"
    ).fetchall()
    con.close()
    spans: dict[str, dict[str, tuple[int, int]]] = {}
    kept: Counter[tuple[str, str]] = Counter()
    skip, focused = [], []
    for job, module, operator, occurrence, row, name in rows:
        key = next((k for k in wanted if module.endswith(k)), None)
        if key is not None and module not in spans:
            spans[module] = body_rows(Path(args.root) / module, wanted[key])
        span = spans.get(module, {}).get(name) if key is not None else None
        keep = span is not None and (
            args.all_operators or (row >= span[0] and not trivial_operator(operator))
        )
        if keep:
            focused.append(((module, operator, occurrence), job, name))
        else:
            skip.append(job)
    focused.sort()
    if 0 < args.sample < len(focused):
        chosen = set(random.Random(args.seed).sample(range(len(focused)), args.sample))
        skip += [job for i, (_, job, _) in enumerate(focused) if i not in chosen]
        focused = [f for i, f in enumerate(focused) if i in chosen]
    for (module, _, _), _, name in focused:
        kept[(module, name)] += 1
    with use_db(args.session) as db:
        done = {job for job, _ in db.results}
        for job in skip:
            if job not in done:
                db.set_result(
                    job,
                    WorkResult(
                        output="outside the focus (benchmarks/cr_focus.py)",
                        worker_outcome=WorkerOutcome.SKIPPED,
                    ),
                )
    for (module, name), n in sorted(kept.items()):
        print(f"{module}:{name} {n}")
    print(f"kept {sum(kept.values())} of {len(rows)} mutants")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
