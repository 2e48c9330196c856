"""Sign and verify a ~1 GiB model folder: mlwarden vs ``sha256sum`` vs the ``model_signing`` CLI.

The model is several files of random bytes (default 4 x 256 MiB) built once under ``bench-out/signing_model``
(or ``--dir``) and reused while its sizes match. Every round runs each command once, in a rotating order, on
a warm page cache (one untimed read first); the table shows the median wall time of ``--rounds`` rounds and
the ratios the issue sets targets for: mlwarden <= 1.2 x ``sha256sum`` and no slower than ``model_signing``.

Everything runs as a user would run it: a fresh CLI process per command (start-up, imports, key loading,
hashing, signing, writing the bundle). ``sha256sum`` hashes the files one after the other in one process
(that is what it does); mlwarden hashes them in parallel threads; ``model_signing`` too (its default
``files`` serialization uses a thread pool). Raw numbers go to ``bench-out/signing.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench-out"
VENV_BIN = Path(sys.executable).parent
#: Runs mlwarden's CLI in the benchmark's interpreter.
MLWARDEN = "import sys; from mlwarden.cli import main as m; sys.exit(m.main(sys.argv[1:]))"


def build_model(folder: Path, count: int, size_mib: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    for path in files:
        if path.is_file() and path.stat().st_size == size_mib << 20:
            continue
        print(f"writing {path} ({size_mib} MiB of random bytes)", file=sys.stderr)
        with path.open("wb") as out:
            for _ in range(size_mib):
                out.write(os.urandom(1 << 20))
    for extra in folder.iterdir():
        if extra not in files:
            raise SystemExit(f"{folder} holds {extra.name}, which this benchmark did not write: use another --dir")
    return files


def keys(folder: Path) -> tuple[Path, Path]:
    private, public = folder / "bench-key.pem", folder / "bench-key.pub"
    if not private.exists():
        from mlwarden.integrity.keys import generate_key_pair

        generate_key_pair(private, public)
    return private, public


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"command failed ({done.returncode}): {' '.join(command)}\n{done.stdout}{done.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=OUT / "signing_model", help="model folder (built if needed)")
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--size-mib", type=int, default=256, help="size of each file")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    model = args.dir
    files = build_model(model, args.files, args.size_mib)
    work = OUT / "signing_work"
    work.mkdir(parents=True, exist_ok=True)
    private, public = keys(work)
    model_signing = shutil.which("model_signing", path=str(VENV_BIN)) or "model_signing"
    python = sys.executable
    ours_sig, theirs_sig = work / "mlwarden.sig", work / "model_signing.sig"
    commands: dict[str, list[str]] = {
        "sha256sum": ["sha256sum", *map(str, files)],
        "mlwarden sign": [
            python,
            "-c",
            MLWARDEN,
            "sign",
            "key",
            str(model),
            "--private-key",
            str(private),
            "--signature",
            str(ours_sig),
        ],
        "mlwarden verify": [
            python,
            "-c",
            MLWARDEN,
            "verify",
            "key",
            str(model),
            "--public-key",
            str(public),
            "--signature",
            str(ours_sig),
        ],
        "model_signing sign": [
            model_signing,
            "sign",
            "key",
            str(model),
            "--private_key",
            str(private),
            "--signature",
            str(theirs_sig),
        ],
        "model_signing verify": [
            model_signing,
            "verify",
            "key",
            str(model),
            "--public_key",
            str(public),
            "--signature",
            str(theirs_sig),
        ],
    }
    timed(commands["sha256sum"])  # warm the page cache
    for name in ("mlwarden sign", "model_signing sign"):  # verify needs a signature to exist
        timed(commands[name])
    order = list(commands)
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for round_no in range(args.rounds):
        rotated = order[round_no % len(order) :] + order[: round_no % len(order)]
        for name in rotated:
            samples[name].append(timed(commands[name]))
    median = {name: statistics.median(values) for name, values in samples.items()}
    total = sum(f.stat().st_size for f in files)
    print(
        f"\nmodel: {len(files)} files, {total / (1 << 30):.2f} GiB in {model}; "
        f"median of {args.rounds} rounds; {os.cpu_count()} cores\n"
    )
    print(f"{'command':<22} {'median s':>9} {'MiB/s':>8} {'x sha256sum':>12} {'x model_signing':>16}")
    for name in commands:
        peer = name.replace("mlwarden", "model_signing") if name.startswith("mlwarden") else None
        vs_peer = f"{median[name] / median[peer]:.2f}" if peer else "-"
        print(
            f"{name:<22} {median[name]:>9.2f} {total / (1 << 20) / median[name]:>8.0f} "
            f"{median[name] / median['sha256sum']:>12.2f} {vs_peer:>16}"
        )
    OUT.mkdir(exist_ok=True)
    result = {
        "benchmark": "signing",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "model": {"dir": str(model), "files": len(files), "bytes": total},
        "rounds": args.rounds,
        "samples_seconds": samples,
        "median_seconds": median,
        "ratios": {
            "mlwarden_sign_vs_sha256sum": median["mlwarden sign"] / median["sha256sum"],
            "mlwarden_verify_vs_sha256sum": median["mlwarden verify"] / median["sha256sum"],
            "mlwarden_sign_vs_model_signing": median["mlwarden sign"] / median["model_signing sign"],
            "mlwarden_verify_vs_model_signing": median["mlwarden verify"] / median["model_signing verify"],
        },
    }
    (OUT / "signing.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nraw numbers: {OUT / 'signing.json'}")


if __name__ == "__main__":
    main()
