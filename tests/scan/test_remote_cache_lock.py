"""The remote download cache shared by several processes (bulk workers, two ``mlwarden scan`` runs).

Real processes (``multiprocessing`` spawn) fetch the same and different objects from the loopback ``RangeServer``
into one cache whose bound holds two of the four objects, so they evict each other's copies all the time. Afterwards
the cache must be consistent: every index entry names a blob whose bytes hash to its name, every blob's name is its
sha256, the total is within the bound and no temporary file is left; the same holds, but for downloads in flight in
``tmp/``, at every moment this process takes the lock while they run. A second test holds the cache's lock in this
process and checks that another process's fetch waits for it.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlwarden.scan.remote import resolve
from mlwarden.scan.remote_cache import RemoteCache
from tests.scan.remote_servers import RangeServer

SIZE = 40_000
BOUND = 100_000  # two copies fit, a third evicts
NAMES = ("a", "b", "c", "d")


def _blob(seed: int) -> bytes:
    out = bytearray()
    block = hashlib.sha256(f"lock-{seed}".encode()).digest()
    while len(out) < SIZE:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:SIZE])


def fetch_many(base: str, directory: str, rounds: int, seed: int, expected: dict[str, str]) -> None:
    """Child process: fetch every object ``rounds`` times in a shuffled order; fail loudly on any wrong copy."""
    rng = random.Random(seed)  # an order, not a secret
    cache = RemoteCache(directory, max_bytes=BOUND, chunk=4096)  # 10 ranged reads per download: long enough to overlap
    for _ in range(rounds):
        names = list(NAMES)
        rng.shuffle(names)
        for name in names:
            (item,) = resolve(f"{base}/m/{name}.bin")
            copy = cache.fetch(item, 1 << 30)
            if copy.sha256 != expected[name] or copy.path.name != expected[name]:
                raise AssertionError(f"{name}: got {copy.sha256}")


def fetch_one(base: str, directory: str) -> None:
    """Child process: one fetch."""
    (item,) = resolve(f"{base}/m/a.bin")
    RemoteCache(directory, max_bytes=BOUND).fetch(item, 1 << 30)


@pytest.fixture
def server() -> Iterator[RangeServer]:
    srv = RangeServer(files={f"/m/{name}.bin": _blob(i) for i, name in enumerate(NAMES)}).start()
    yield srv
    srv.stop()


def _consistent(root: Path, *, idle: bool = True) -> None:
    """The cache's invariants (``idle``: no download in flight either, so ``tmp/`` is empty)."""
    blobs = {p.name: p.read_bytes() for p in (root / "blobs").iterdir()}
    for name, data in blobs.items():
        assert hashlib.sha256(data).hexdigest() == name, f"blob {name} does not hold its own content"
    for index in (root / "pins").iterdir():
        entry = json.loads(index.read_text(encoding="utf-8"))
        assert entry["sha256"] in blobs, f"{index.name} points at a blob that is gone"
        assert entry["size"] == len(blobs[entry["sha256"]])
    assert sum(len(d) for d in blobs.values()) <= BOUND
    if idle:
        assert list((root / "tmp").iterdir()) == []


def test_two_processes_share_one_bounded_cache_consistently(server: RangeServer, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    expected = {name: hashlib.sha256(_blob(i)).hexdigest() for i, name in enumerate(NAMES)}
    spawn = multiprocessing.get_context("spawn")
    procs = [spawn.Process(target=fetch_many, args=(server.url, str(root), 6, seed, expected)) for seed in (1, 2, 3)]
    for p in procs:
        p.start()
    watcher = RemoteCache(root, max_bytes=BOUND)
    snapshots = 0
    deadline = time.monotonic() + 120
    while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
        if (root / "lock").exists():
            with watcher.locked():  # whenever no process is changing it, the cache is consistent
                _consistent(root, idle=False)
            snapshots += 1
        time.sleep(0.01)
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert snapshots > 10
    _consistent(root)
    downloads = sum(1 for m, path, _ in server.log if m == "GET" and path.endswith(".bin")) // 10
    assert downloads > len(NAMES)  # the bound forced re-downloads: the processes did evict each other's copies
    assert RemoteCache(root, max_bytes=BOUND).total_bytes() <= BOUND


def test_a_fetch_waits_for_the_lock_held_by_another_process(server: RangeServer, tmp_path: Path) -> None:
    cache = RemoteCache(tmp_path / "cache", max_bytes=BOUND)
    cache.fetch(resolve(f"{server.url}/m/b.bin")[0], 1 << 30)  # lays the folder out
    spawn = multiprocessing.get_context("spawn")
    with cache.locked():
        server.log.clear()
        child = spawn.Process(target=fetch_one, args=(server.url, str(cache.directory)))
        child.start()
        deadline = time.monotonic() + 60
        while not any(m == "HEAD" for m, _, _ in server.log) and time.monotonic() < deadline:
            time.sleep(0.05)  # the child has resolved the URL: it is at the cache now
        time.sleep(1.0)
        assert child.is_alive()
        assert [m for m, _, _ in server.log if m == "GET"] == []  # blocked before downloading anything
        assert sorted(p.name for p in (cache.directory / "blobs").iterdir()) == [hashlib.sha256(_blob(1)).hexdigest()]
    child.join(60)
    assert child.exitcode == 0
    assert hashlib.sha256(_blob(0)).hexdigest() in {p.name for p in (cache.directory / "blobs").iterdir()}
    _consistent(cache.directory)
