"""``python -m mlwarden_samples [demo] OUT_DIR [--canary-dir D] [--only a,b] [--benign-only|...]``.

Builds the sample corpus and writes ``OUT_DIR/labels.json``. Nothing built is ever loaded. With the
``demo`` word first, only a few representative families are built (what ``make demo`` scans).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from pathlib import Path

from mlwarden_samples import build_benign, build_malicious, families, write_labels

#: The representative subset ``make demo`` builds: everyday models, and one canary per attack surface.
DEMO_FAMILIES = (
    "sklearn-pipeline",
    "torch-state-dict",
    "torch-checkpoint",
    "numpy",
    "safetensors",
    "gguf",
    "hf-folder",
    "pickle-os-system",
    "pickle-stack-global-decoys",
    "torch-zip-data-pkl",
    "torch-zip-extra-member",
    "joblib-reduce",
    "numpy-object-payload",
    "gguf-ssti",
    "hf-auto-map",
    "nested-archive",
    "zip-path-traversal",
)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, build the samples, print a one-line-per-label summary."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    demo = len(args_in) >= 2 and args_in[0] == "demo" and not args_in[1].startswith("-")
    if demo:
        args_in = args_in[1:]
    parser = argparse.ArgumentParser(
        prog="python -m mlwarden_samples", description="Build benign and malicious (canary) sample model files."
    )
    parser.add_argument("out_dir", type=Path, help="output directory (created if needed)")
    parser.add_argument(
        "--canary-dir", type=Path, default=None, help="the only directory payloads name (default: OUT_DIR/canary)"
    )
    parser.add_argument(
        "--only", default=None, help="comma-separated family names or shell patterns, e.g. 'torch-*,numpy'"
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--benign-only", action="store_true", help="build benign samples only")
    which.add_argument("--malicious-only", action="store_true", help="build malicious samples only")
    parser.add_argument("--list", action="store_true", help="list the families and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="report skipped families")
    args = parser.parse_args(args_in)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")

    if args.list:
        for label in ("benign", "malicious"):
            for family in families(label):
                print(f"{label}\t{family}")
        return 0

    only = [p.strip() for p in args.only.split(",") if p.strip()] if args.only else None
    if demo and only is None:
        only = list(DEMO_FAMILIES)
    if only:
        import fnmatch

        known = families()
        unknown = [p for p in only if not any(fnmatch.fnmatchcase(f, p) for f in known)]
        if unknown:
            parser.error(f"no sample family matches: {', '.join(unknown)} (see --list)")

    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    canary_dir: Path = args.canary_dir or out_dir / "canary"
    samples = []
    if not args.malicious_only:
        samples += build_benign(out_dir, only=only)
    if not args.benign_only:
        samples += build_malicious(out_dir, canary_dir, only=only)
    labels = write_labels(samples, out_dir)
    counts = Counter(s.label for s in samples)
    print(
        f"built {counts['benign']} benign and {counts['malicious']} malicious samples in {out_dir}; "
        f"labels: {labels}; canary dir: {canary_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
