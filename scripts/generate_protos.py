"""Regenerates the Python stubs in clients/modelroute/v1 from protos/.

Besides protoc's output it writes `modelroute/v1/reasons.py`: one exception class
per value of the ErrorReason enum, below the class of its `status_code` option.

Usage:
    python scripts/generate_protos.py            # write the stubs
    python scripts/generate_protos.py --check    # fail if the committed stubs are stale

Generator versions are pinned exactly in clients/pyproject.toml's `codegen`
extra, so regenerating on any machine gives the same bytes.
"""

from __future__ import annotations

import argparse
import filecmp
import re
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
ERROR_REASON_PROTO = PROTO_ROOT / PACKAGE_DIR / "error_reason.proto"
# A value with its leading comment lines: `// ...` lines, then `ERROR_REASON_X = N [(status_code) = CODE];`.
REASON_VALUE = re.compile(r"((?:^ *//.*\n)*)^ *ERROR_REASON_(\w+) = \d+ \[\(status_code\) = (\w+)\];", re.M)
# The status classes of modelroute/errors.py, by google.rpc.Code name.
STATUS_CLASS_NAMES = {
    "CANCELLED": "CancelledError",
    "UNKNOWN": "UnknownError",
    "INVALID_ARGUMENT": "InvalidArgumentError",
    "DEADLINE_EXCEEDED": "DeadlineExceededError",
    "NOT_FOUND": "NotFoundError",
    "ALREADY_EXISTS": "AlreadyExistsError",
    "PERMISSION_DENIED": "PermissionDeniedError",
    "RESOURCE_EXHAUSTED": "ResourceExhaustedError",
    "FAILED_PRECONDITION": "FailedPreconditionError",
    "ABORTED": "AbortedError",
    "UNIMPLEMENTED": "UnimplementedError",
    "INTERNAL": "InternalError",
    "UNAVAILABLE": "UnavailableError",
    "UNAUTHENTICATED": "UnauthenticatedError",
}


def reason_class_name(reason: str) -> str:
    camel = "".join(part.capitalize() for part in reason.split("_"))
    return camel if camel.endswith("Error") else camel + "Error"


def reasons_module() -> str:
    """modelroute/v1/reasons.py, from the ErrorReason enum (a reason whose class name is its status
    class's, INTERNAL_ERROR, is that class)."""
    values = REASON_VALUE.findall(ERROR_REASON_PROTO.read_text())
    if not values:
        sys.exit(f"no ErrorReason values with a status_code option in {ERROR_REASON_PROTO}")
    bases = sorted({STATUS_CLASS_NAMES[code] for _, _, code in values})
    lines = [
        '"""Generated from protos/modelroute/v1/error_reason.proto by scripts/generate_protos.py; do not edit."""',
        "",
        "from __future__ import annotations",
        "",
        f"from ..errors import ModelrouteError, {', '.join(bases)}",
        "",
    ]
    mapping = []
    for comment, reason, code in values:
        name, base = reason_class_name(reason), STATUS_CLASS_NAMES[code]
        mapping.append(f'    "{reason}": {name},')
        if name == base:
            continue
        text = " ".join(line.strip().removeprefix("//").strip() for line in comment.splitlines())
        doc = f"{reason} ({code}){': ' + text if text else ''}"
        lines += ["", f"class {name}({base}):", f'    """{doc}"""', "", f'    REASON = "{reason}"', ""]
    lines += [
        "",
        "# Every reason of the ErrorReason enum, by its ErrorInfo.reason string.",
        "REASON_CLASSES: dict[str, type[ModelrouteError]] = {",
        *mapping,
        "}",
        "",
        "__all__ = [",
        *sorted(
            f'    "{reason_class_name(reason)}",'
            for _, reason, code in values
            if reason_class_name(reason) != STATUS_CLASS_NAMES[code]
        ),
        "]",
    ]
    return "\n".join(lines) + "\n"


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
    (target / "reasons.py").write_text(reasons_module())


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
