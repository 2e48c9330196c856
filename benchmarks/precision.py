"""Precision benchmark: false positives (and catches) of mlwarden's three modes vs picklescan, modelscan, fickling.

Labelled corpora: ``../shared/corpus/{realworld,modelaudit,picklescan}`` (each with ``labels.json``: relative path ->
``{label: benign|malicious|unknown, format, note}``; ``unknown`` is not scored) plus any number of external folders
(``--external DIR``, repeatable). In an external folder every file is a benign sample unless the folder's
``labels.json`` says otherwise (its top-level ``labels.json``, ``SOURCES.md`` and ``README.md`` are metadata and are
not scanned).

mlwarden runs through its CLI, as a user would, once per corpus and mode: ``--static-only``, ``--dynamic`` (sandboxed
phases only) and the default (static + dynamic), each ``mlwarden scan --format json --no-suppressions --jobs N``
over the corpus's files (flagged: a finding at or above the report's ``fail_on``, medium by default). The peers run
through ``_runner.py`` (one subprocess per corpus, flagged as their own tests count detection; see the README).
A sample that is a folder counts once (flagged if any file in it is).

Per corpus x tool/mode x format family (sniffed from the bytes here, independently of every tool): benign flagged,
malicious flagged, errors, wall time (whole subprocess) and scan time; ratios mlwarden / peer. Then every benign
file mlwarden flags, with the rule IDs and the modes that flag it. Raw numbers: ``bench-out/precision.json``.
Nothing asserts; it measures and prints.

Run: ``.venv/bin/python benchmarks/precision.py [--external DIR ...] [--modes static,dynamic,default]
[--tools mlwarden,picklescan,modelscan,fickling] [--quick] [--sample N]``.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import json
import lzma
import os
import random
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _peers import (
    PEERS,
    REPO,
    SEVERITIES,
    TOOLS,
    Run,
    machine,
    peer_versions,
    ratio,
    require_peers,
    run_tool,
    save,
    scan_json,
    table,
)

SHARED = REPO.parent / "shared" / "corpus"
SHARED_CORPORA = ("realworld", "modelaudit", "picklescan")
MODES = {"static": "--static-only", "dynamic": "--dynamic", "default": None}
METADATA = {"labels.json", "SOURCES.md", "README.md"}


# ---------------------------------------------------------------------------------------------------------------
# Format families: a small sniffer of our own, so that the grouping does not depend on the tool under test.
# ---------------------------------------------------------------------------------------------------------------

_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # pickled 0x1950a86a20f9469cfc6c (torch < 1.6)


def _is_pickle(head: bytes) -> bool:
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _decompressed_head(path: Path, head: bytes) -> bytes | None:
    opener: Any = None
    if head.startswith(b"\x1f\x8b"):
        opener = gzip.open
    elif head.startswith(b"BZh"):
        opener = bz2.open
    elif head.startswith(b"\xfd7zXZ\x00") or head[:3] == b"\x5d\x00\x00":
        opener = lzma.open
    if opener is None:
        if len(head) >= 2 and head[0] == 0x78 and (head[0] * 256 + head[1]) % 31 == 0:  # zlib (joblib 0.10+)
            try:
                return zlib.decompressobj().decompress(path.read_bytes()[:65536])[:64]
            except zlib.error:
                return None
        return None
    try:
        with opener(path, "rb") as fh:
            return bytes(fh.read(64))
    except (OSError, EOFError, ValueError, lzma.LZMAError):
        return b""


def _zip_family(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (OSError, ValueError, zipfile.BadZipFile):
        return "zip"
    if path.suffix == ".keras" or {"config.json", "model.weights.h5"} <= set(names):
        return "keras-v3"
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return "pytorch-zip"
    if any(n.endswith("constants.pkl") for n in names):
        return "pytorch-zip"
    if names and (path.suffix == ".npz" or all(n.endswith(".npy") for n in names)):
        return "numpy-npz"
    return "zip"


_MAGIC = (
    (b"\x93NUMPY", "numpy-npy"),
    (b"\x89HDF\r\n\x1a\n", "hdf5"),
    (b"GGUF", "gguf"),
    (b"ZF0x", "joblib"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (_TORCH_LEGACY_MAGIC, "pytorch-legacy"),
)
_BY_SUFFIX = (
    (".onnx", "onnx"),
    (".pb", "protobuf"),
    (".jinja", "chat-template"),
    (".jinja2", "chat-template"),
    (".j2", "chat-template"),
    (".ubj", "xgboost"),
)
_MODEL_SUFFIXES = (".h5", ".hdf5", ".keras", ".pt", ".pth", ".bin", ".pkl", ".npy", ".npz", ".gguf")


def _pickle_family(name: str, suffixes: tuple[str, ...] = (".joblib",)) -> str:
    return "joblib" if "joblib" in name or name.endswith(suffixes) else "pickle"


def _compressed_family(path: Path, name: str, inner: bytes) -> str:
    if inner.startswith(b"\x93NUMPY"):
        return "numpy-npy"
    if len(inner) >= 262 and inner[257:262] == b"ustar" or name.endswith((".tar.gz", ".tgz")):
        return "tar"
    if _is_pickle(inner) or inner.startswith(b"ZF0x"):
        return _pickle_family(name, (".joblib", ".z"))
    return "compressed"


def _json_family(path: Path) -> str:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return "json"
    if isinstance(data, dict) and "chat_template" in data:
        return "chat-template"
    if isinstance(data, dict) and isinstance(data.get("learner"), dict):
        return "xgboost"
    return "json"


def _is_safetensors(path: Path, head: bytes) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n < 100_000_000 and head[8:9] == b"{" and path.stat().st_size >= 8 + n


def _by_name(path: Path, name: str, head: bytes) -> str:
    """Families told by the name (and a little text), for formats without a magic number."""
    for suffix, fam in _BY_SUFFIX:
        if name.endswith(suffix):
            return fam
    if head.startswith(b"tree\n") or b"\nversion=v" in head[:64]:
        return "lightgbm"
    if name == "tokenizer_config.json":
        return "tokenizer-config"
    if name.endswith(".json"):
        return _json_family(path)
    if name.endswith(_MODEL_SUFFIXES):
        return "other-binary"  # a model extension whose bytes match none of the above
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "other-binary"
    return "text"


def family(path: Path) -> str:
    """A coarse format family from magic bytes and the name (pickle, pytorch-zip, onnx, gguf, chat-template...)."""
    name = path.name.lower()
    try:
        with path.open("rb") as fh:
            head = fh.read(512)
    except OSError:
        return "unreadable"
    if not head:
        return "empty"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _zip_family(path)
    for magic, fam in _MAGIC:
        if head.startswith(magic):
            return fam
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if _is_pickle(head) or (name.endswith((".pkl", ".pickle")) and head[:1] in b"(]}cI"):
        return _pickle_family(name)
    inner = _decompressed_head(path, head)
    if inner is not None:
        return _compressed_family(path, name, inner)
    if _is_safetensors(path, head):
        return "safetensors"
    return _by_name(path, name, head)


# ---------------------------------------------------------------------------------------------------------------
# Corpora
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One scored sample: a file, or a folder whose files are scanned one by one."""

    name: str
    label: str
    family: str
    files: tuple[Path, ...]


def _sample(root: Path, rel: str, label: str) -> Sample:
    p = root / rel
    if p.is_dir():
        files = tuple(sorted(f for f in p.rglob("*") if f.is_file()))
        fam = "folder"
    else:
        files = (p,)
        fam = family(p)
    return Sample(rel, label, fam, files)


def load_corpus(root: Path, *, default_benign: bool) -> tuple[list[Sample], int]:
    """Samples of ``root`` (benign/malicious; ``unknown`` dropped) and the number of unknown entries.

    ``default_benign``: every file not covered by ``labels.json`` is a benign sample (external folders).
    """
    labels: dict[str, dict[str, Any]] = {}
    if (root / "labels.json").is_file():
        labels = json.loads((root / "labels.json").read_text(encoding="utf-8"))
    samples: list[Sample] = []
    covered: set[Path] = set()
    unknown = 0
    for rel, entry in sorted(labels.items()):
        p = root / rel
        if not p.exists():
            continue
        s = _sample(root, rel, entry.get("label", "unknown"))
        covered.update(f.resolve() for f in s.files)
        if s.label in ("benign", "malicious"):
            samples.append(s)
        else:
            unknown += 1
    if default_benign:
        for dirpath, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for fname in sorted(files):
                f = Path(dirpath) / fname
                if (Path(dirpath) == root and fname in METADATA) or fname.startswith(".") or f.is_symlink():
                    continue
                if f.resolve() not in covered:
                    samples.append(Sample(str(f.relative_to(root)), "benign", family(f), (f,)))
    return sorted(samples, key=lambda s: s.name), unknown


# ---------------------------------------------------------------------------------------------------------------
# Running the tools
# ---------------------------------------------------------------------------------------------------------------


def _evidence(finding: dict[str, Any]) -> str:
    where = finding["location"].get("phase") or "static"
    return f"{finding['rule_id']}@{where}: {' '.join(str(finding['evidence']).split())[:120]}"


def run_mlwarden(mode: str, files: list[Path], jobs: int, timeout: float) -> Run:
    """``mlwarden scan [--static-only|--dynamic] --format json`` over ``files`` in one process."""
    flag = MODES[mode]
    options = [*([flag] if flag else []), "--jobs", str(jobs), "--no-suppressions"]
    wall, rss, code, stderr, data = scan_json(options, files, timeout)
    fail_on = SEVERITIES.index(data.get("fail_on", "medium"))
    run = Run(f"mlwarden {mode}", wall, rss, code, stderr_tail=stderr if code > 1 or not data["files"] else "")
    for f in data["files"]:
        bad = [x for x in f["findings"] if SEVERITIES.index(x["severity"]) >= fail_on and not x.get("suppressed")]
        dyn = f.get("dynamic") or {}
        dyn_seconds = sum(p.get("seconds", 0.0) for p in dyn.get("phases", []))
        rules = sorted({f"{x['rule_id']}[{x['severity']}]" for x in bad})
        run.rows.append(
            {
                "path": f["path"],
                "flagged": bool(bad),
                "error": f["error"],
                "skipped": False,
                # static duration (+ the sandbox's own phase times: the pooled run does not time files end to end)
                "seconds": f["duration"] + (dyn_seconds if mode != "static" else 0.0),
                "detail": "; ".join(rules),
                "rules": rules,
                "evidence": [_evidence(x) for x in bad[:3]],
                "framework": dyn.get("framework"),
            }
        )
    return run


def verdicts(samples: list[Sample], run: Run) -> dict[str, dict[str, Any]]:
    """Per-sample verdict: flagged/error if any of its files is; skipped if all are; rule IDs collected."""
    by_path = {str(Path(r["path"]).resolve()): r for r in run.rows}
    out: dict[str, dict[str, Any]] = {}
    for s in samples:
        rows = [by_path.get(str(f.resolve())) for f in s.files]
        got = [r for r in rows if r is not None]
        errors = [f"{Path(r['path']).name}: {r['error']}" for r in got if r["error"]]
        if len(got) < len(s.files):
            errors.append(f"no result for {len(s.files) - len(got)} file(s)")
        out[s.name] = {
            "label": s.label,
            "family": s.family,
            "flagged": any(r["flagged"] for r in got),
            "error": "; ".join(errors)[:300] or None,
            "skipped": bool(got) and all(r["skipped"] for r in got),
            "seconds": sum(r["seconds"] for r in got),
            "detail": "; ".join(r["detail"] for r in got if r["detail"])[:300],
            "rules": sorted({x for r in got for x in r.get("rules", [])}),
            "evidence": [e for r in got for e in r.get("evidence", [])][:3],
        }
    return out


def count(v: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Benign/malicious flagged and totals, fail-closed counts, errors, skipped, summed scan seconds."""
    out: dict[str, Any] = {}
    for label in ("benign", "malicious"):
        items = [x for x in v.values() if x["label"] == label]
        out[f"{label}_total"] = len(items)
        out[f"{label}_flagged"] = sum(x["flagged"] for x in items)
        out[f"{label}_flagged_or_error"] = sum(x["flagged"] or bool(x["error"]) for x in items)
    out["errors"] = sum(bool(x["error"]) for x in v.values())
    out["skipped"] = sum(x["skipped"] for x in v.values())
    out["scan_seconds"] = sum(x["seconds"] for x in v.values())
    return out


def _frac(n: int, d: int) -> str:
    return f"{n}/{d}" if d else "-"


def _wrap(title: str, names: list[str], limit: int = 40) -> str:
    if not names:
        return f"  {title}: none"
    shown = names[:limit] + ([f"... (+{len(names) - limit})"] if len(names) > limit else [])
    return textwrap.fill(
        ", ".join(shown), width=118, initial_indent=f"  {title} ({len(names)}): ", subsequent_indent="      "
    )


# ---------------------------------------------------------------------------------------------------------------
# One corpus
# ---------------------------------------------------------------------------------------------------------------


def _print_runs(runs: dict[str, Run], totals: dict[str, dict[str, Any]]) -> None:
    """One row per tool/mode: verdict counts, wall/scan time, RSS, and mlwarden's wall over each peer's."""
    peers = [p for p in PEERS if p in runs]
    rows = []
    for r, run in runs.items():
        c = totals[r]
        mlw = r.startswith("mlwarden")
        rows.append(
            [
                r,
                _frac(c["benign_flagged"], c["benign_total"]),
                _frac(c["malicious_flagged"], c["malicious_total"]),
                f"{c['benign_flagged_or_error']}/{c['malicious_flagged_or_error']}",
                c["errors"],
                c["skipped"],
                f"{run.wall:.1f}",
                f"{c['scan_seconds']:.1f}",
                f"{run.rss_mb:.0f}",
                *[ratio(run.wall, runs[p].wall) if mlw else "" for p in peers],
            ]
        )
    headers = ["tool / mode", "benign flagged", "malicious flagged", "fail-closed ben/mal", "errors", "skipped"]
    headers += ["wall s", "scan s", "RSS MiB", *[f"wall ÷ {p}" for p in peers]]
    print(table(headers, rows))
    for r, run in runs.items():
        if run.returncode not in (0, 1) and run.stderr_tail:
            print(f"  ! {r} exited {run.returncode}: {run.stderr_tail[-300:]}")


def _by_family(samples: list[Sample], v: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Counts per format family and tool/mode; prints one compact cell per tool/mode."""
    by_fam: dict[str, dict[str, Any]] = {}
    frows = []
    for fam in sorted({s.family for s in samples}):
        by_fam[fam] = {}
        cells = []
        for r in v:
            c = count({k: x for k, x in v[r].items() if x["family"] == fam})
            by_fam[fam][r] = c
            cells.append(
                f"{_frac(c['benign_flagged'], c['benign_total'])} "
                f"{_frac(c['malicious_flagged'], c['malicious_total'])} {c['errors']} {c['scan_seconds']:.2f}"
            )
        frows.append([fam, *cells])
    print("per format (cell: benign flagged/total, malicious flagged/total, errors, scan s):")
    print(table(["format", *v], frows))
    return by_fam


def _print_rule_counts(v: dict[str, dict[str, dict[str, Any]]], mlw_runs: list[str]) -> None:
    by_rule: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in mlw_runs:
        for x in v[r].values():
            if x["label"] == "benign" and x["flagged"]:
                for e in x["evidence"]:
                    by_rule[(r.split()[1], e.split(":", 1)[0])].append(e.split(": ", 1)[-1][:70])
    if by_rule:
        print("benign flags by mode and rule@phase (count of findings among the first 3 per sample):")
        rrows = []
        for (mode, rule), evs in sorted(by_rule.items()):
            common = max(set(evs), key=evs.count)
            rrows.append([mode, rule, len(evs), f"{common} (x{evs.count(common)})"])
        print(table(["mode", "rule@phase", "findings", "most common evidence"], rrows))


def _mlwarden_flags(samples: list[Sample], v: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, list[str]]]:
    """Print every benign sample mlwarden flags (rule IDs per mode, first evidence), its misses and errors."""
    mlw_runs = [r for r in v if r.startswith("mlwarden")]
    fps: dict[str, dict[str, list[str]]] = defaultdict(dict)
    for r in mlw_runs:
        for s, x in v[r].items():
            if x["label"] == "benign" and x["flagged"]:
                fps[s][r.split()[1]] = x["rules"]
    if not mlw_runs:
        return fps
    families = {x.name: x.family for x in samples}
    print(f"benign samples flagged by mlwarden ({len(fps)}):" + ("" if fps else " none"))
    for s in sorted(fps):
        ev = next((v[r][s]["evidence"] for r in mlw_runs if v[r][s]["flagged"]), [])
        print(f"  {s} [{families[s]}]")
        for m, rules in fps[s].items():
            print(f"      {m:<8} {', '.join(rules)}")
        for e in ev[:2]:
            print(f"      > {e}")
    _print_rule_counts(v, mlw_runs)
    for r in mlw_runs:
        missed = [s for s, x in v[r].items() if x["label"] == "malicious" and not x["flagged"]]
        print(_wrap(f"{r}: malicious missed", missed))
        errs = [f"{s} ({x['error']})" for s, x in v[r].items() if x["error"]]
        if errs:
            print(_wrap(f"{r}: errors", errs, limit=10))
    return fps


def bench_corpus(
    name: str, samples: list[Sample], unknown: int, runners: list[str], jobs: int, timeout: float
) -> dict[str, Any]:
    """Run every selected tool/mode over one corpus; print its tables; return the raw numbers."""
    files = sorted({f for s in samples for f in s.files})
    nb = sum(s.label == "benign" for s in samples)
    nm = sum(s.label == "malicious" for s in samples)
    print(f"\n=== {name}: {nb} benign + {nm} malicious samples ({unknown} unknown not scored), {len(files)} files ===")
    runs: dict[str, Run] = {}
    for r in runners:
        t0 = time.perf_counter()
        if r.startswith("mlwarden "):
            runs[r] = run_mlwarden(r.split()[1], files, jobs, timeout)
        else:
            runs[r] = run_tool(r, files, timeout=timeout)
        print(f"  ran {r:<17} {time.perf_counter() - t0:7.1f} s", file=sys.stderr, flush=True)
    v = {r: verdicts(samples, run) for r, run in runs.items()}
    totals = {r: count(x) for r, x in v.items()}
    _print_runs(runs, totals)
    by_fam = _by_family(samples, v)
    fps = _mlwarden_flags(samples, v)
    for p in (p for p in PEERS if p in runs):
        print(_wrap(f"{p}: benign flagged", [s for s, x in v[p].items() if x["label"] == "benign" and x["flagged"]]))
    return {
        "samples": len(samples),
        "files": len(files),
        "unknown": unknown,
        "runs": runs,
        "totals": totals,
        "by_family": by_fam,
        "verdicts": v,
        "mlwarden_benign_flagged": fps,
    }


def summary(results: dict[str, dict[str, Any]], runners: list[str]) -> None:
    """One line per corpus and tool/mode, the cross-corpus view."""
    rows = []
    for corpus, res in results.items():
        for r in runners:
            c = res["totals"][r]
            run = res["runs"][r]
            rows.append(
                [
                    corpus,
                    r,
                    _frac(c["benign_flagged"], c["benign_total"]),
                    _frac(c["malicious_flagged"], c["malicious_total"]),
                    c["errors"],
                    f"{run.wall:.1f}",
                ]
            )
    print("\n=== summary ===")
    print(table(["corpus", "tool / mode", "benign flagged", "malicious flagged", "errors", "wall s"], rows))


def main() -> int:
    """Parse options, load the corpora, run everything, print, save ``bench-out/precision.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--external", action="append", default=[], metavar="DIR", help="extra folder (repeatable)")
    parser.add_argument("--modes", default="static,dynamic,default", help="mlwarden modes: static,dynamic,default")
    parser.add_argument("--tools", default=",".join(TOOLS), help="tools: mlwarden,picklescan,modelscan,fickling")
    parser.add_argument("--quick", action="store_true", help="static-only mlwarden + the peers")
    parser.add_argument("--corpora", default=",".join(SHARED_CORPORA), help="shared corpora to include ('' = none)")
    parser.add_argument("--sample", type=int, metavar="N", help="at most N samples per corpus (seeded, for dynamic)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="mlwarden --jobs (default 1, like the peers)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="per tool run, seconds")
    parser.add_argument("--out", default="precision", help="bench-out/<OUT>.json")
    args = parser.parse_args()

    modes = ["static"] if args.quick else [m for m in args.modes.split(",") if m]
    tools = [t for t in args.tools.split(",") if t]
    bad = [m for m in modes if m not in MODES] + [t for t in tools if t not in TOOLS]
    if bad:
        parser.error(f"unknown mode/tool: {bad}")
    runners = [f"mlwarden {m}" for m in modes] if "mlwarden" in tools else []
    runners += [t for t in tools if t != "mlwarden"]
    if any(t in PEERS for t in tools):
        require_peers()
    versions = peer_versions() if any(t in PEERS for t in tools) else {}
    print(f"precision benchmark — {machine()} — {versions} — runs: {runners}")

    corpora: list[tuple[str, Path, bool]] = [
        (c, SHARED / c, False) for c in args.corpora.split(",") if c and (SHARED / c / "labels.json").exists()
    ]
    for ext in args.external:
        p = Path(ext).resolve()
        if not p.is_dir():
            parser.error(f"--external {ext}: not a folder")
        corpora.append((f"external:{p.name}", p, True))

    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "src"], capture_output=True, text=True
    ).stdout.split("\n")
    dirty = [d[3:] for d in dirty if d.strip()]
    print(f"mlwarden source: commit {git[:12]}, {len(dirty)} uncommitted file(s) under src/: {dirty[:12]}")
    results: dict[str, Any] = {}
    for name, root, default_benign in corpora:
        samples, unknown = load_corpus(root, default_benign=default_benign)
        if args.sample and len(samples) > args.sample:
            samples = sorted(random.Random(args.seed).sample(samples, args.sample), key=lambda s: s.name)
        results[name] = bench_corpus(name, samples, unknown, runners, args.jobs, args.timeout)
        save(args.out, {"git": git, "dirty_src": dirty, "partial": True, **results})  # survives an interrupted run
    summary(results, runners)
    payload = {
        "machine": machine(),
        "versions": versions,
        "git": git,
        "dirty_src": dirty,
        "runners": runners,
        "options": vars(args),
        **results,
    }
    print(f"raw numbers: {save(args.out, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
