"""Regenerates the Python stubs in clients/modelroute/v1 from protos/.

Usage:
    python scripts/generate_protos.py            # write the stubs
    python scripts/generate_protos.py --check    # fail if the committed stubs are stale

Generator versions are pinned exactly in clients/pyproject.toml's `codegen`
extra, so regenerating on any machine gives the same bytes.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIR = Path("modelroute") / "v1"
OUTPUT_ROOT = ROOT / "clients"
WELL_KNOWN = Path(grpc_tools.__file__).parent / "_proto"


def generate(out_root: Path) -> None:
    sources = sorted((PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    if not sources:
        sys.exit(f"no .proto files under {PROTO_ROOT / PACKAGE_DIR}")
    target = out_root / PACKAGE_DIR
    target.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{WELL_KNOWN}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *(str(s.relative_to(PROTO_ROOT)) for s in sources),
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    (target / "__init__.py").write_text('"""Generated from protos/modelroute/v1; do not edit."""\n')


def generated_files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in (root / PACKAGE_DIR).iterdir() if p.is_file()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    options = parser.parse_args()
    if not options.check:
        shutil.rmtree(OUTPUT_ROOT / PACKAGE_DIR, ignore_errors=True)
        generate(OUTPUT_ROOT)
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        fresh_root = Path(scratch)
        generate(fresh_root)
        fresh, committed = generated_files(fresh_root), generated_files(OUTPUT_ROOT)
        stale = sorted(str(p) for p in fresh ^ committed)
        stale += sorted(
            str(p) for p in fresh & committed if not filecmp.cmp(fresh_root / p, OUTPUT_ROOT / p, shallow=False)
        )
    if stale:
        print("generated stubs are stale; run scripts/generate_protos.py:", *stale, sep="\n  ")
        return 1
    print("generated stubs are current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
