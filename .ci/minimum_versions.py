"""The declared minimum versions of the runtime dependencies (pyproject's ``>=`` floors), for CI's second venv.

    python3 .ci/minimum_versions.py [--except torch]   # prints name==floor, one per line (pip arguments)
    python  .ci/minimum_versions.py --check [--except torch]   # exit 1 unless the installed versions are the floors

torch is left out in CI (``--except torch``): its floor's wheels on the default index are CUDA builds; CI
keeps the pinned CPU wheel in both venvs.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def floors(skip: set[str]) -> dict[str, str]:
    deps = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["dependencies"]
    out = {}
    for dep in deps:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][A-Za-z0-9.]*)\s*", dep)
        if m is None:
            raise SystemExit(f"{PYPROJECT}: dependency {dep!r} has no plain '>=' floor")
        if m.group(1).lower() not in skip:
            out[m.group(1)] = m.group(2)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--except", dest="skip", nargs="*", default=[], help="dependencies to leave out")
    ap.add_argument("--check", action="store_true", help="compare with the installed versions")
    args = ap.parse_args()
    wanted = floors({s.lower() for s in args.skip})
    if not args.check:
        print("\n".join(f"{name}=={version}" for name, version in wanted.items()))
        return 0
    bad = []
    for name, version in wanted.items():
        installed = metadata.version(name)
        print(f"{name}: floor {version}, installed {installed}")
        if installed != version:
            bad.append(name)
    if bad:
        print(f"not at their declared floor: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
