"""Writers at once: registrations get distinct, gapless version numbers on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlwarden.registry.db import Database
from mlwarden.registry.service import Registry

from .helpers import ALICE, CAROL, VIC, World, torch_model, world


@pytest.fixture
def w(database: Database, tmp_path: Path) -> Iterator[World]:
    with world(database.url, tmp_path) as built:
        yield built


def _race(w: World, name: str, writers: int) -> list[int]:
    """``writers`` threads, each with its own Registry (own engine, like separate processes), register at once."""
    models = [torch_model(w.root / f"race-{i}" / "model.pt", seed=100 + i) for i in range(writers)]
    registries = [Registry.open(w.url, home=w.root / "home", gates=w.registry.gates) for _ in range(writers)]
    barrier = threading.Barrier(writers)
    numbers: list[int] = []
    errors: list[BaseException] = []

    def run(registry: Registry, model: Path) -> None:
        try:
            barrier.wait()
            numbers.append(registry.register(ALICE, name, model).version)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=pair) for pair in zip(registries, models, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for registry in registries:
        registry.close()
    assert errors == []
    return sorted(numbers)


@pytest.mark.parametrize("writers", [2, 4])
def test_writers_registering_a_new_model_at_once(w: World, writers: int) -> None:
    assert _race(w, "fresh", writers) == list(range(1, writers + 1))
    assert [v.version for v in w.registry.versions(VIC, "fresh")] == list(range(1, writers + 1))


def test_writers_registering_an_existing_model_at_once(w: World) -> None:
    w.register("busy")
    assert _race(w, "busy", 3) == [2, 3, 4]
    digests = {v.digest for v in w.registry.versions(VIC, "busy")}
    assert len(digests) == 4


def test_two_deployers_of_one_alias(w: World) -> None:
    for seed in (0, 1):
        w.approved(seed=seed)
    registries = [Registry.open(w.url, home=w.root / "home", gates=w.registry.gates) for _ in range(2)]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(registry: Registry, ref: str) -> None:
        try:
            barrier.wait()
            registry.deploy(CAROL, ref, "production")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(r, f"fraud:{i + 1}")) for i, r in enumerate(registries)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for registry in registries:
        registry.close()
    assert errors == []
    states = {v.ref: v.state.value for v in w.registry.versions(VIC, "fraud")}
    winner = w.registry.resolve(VIC, "fraud@production").ref
    assert states[winner] == "deployed"
    assert sorted(states.values()) == ["approved", "deployed"]
