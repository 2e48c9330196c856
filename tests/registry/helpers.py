"""Builders for the registry tests: real small models, keys, signatures, dataset manifests and a populated registry."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mlwarden.integrity.dataset import build_dataset_manifest, sign_dataset_manifest
from mlwarden.integrity.envelope import write_bundle
from mlwarden.integrity.keys import generate_key_pair
from mlwarden.integrity.signing import sign_model
from mlwarden.registry.gates import ApproveGate, DeployGate, Gates
from mlwarden.registry.roles import Principal, Role
from mlwarden.registry.service import Registry
from mlwarden.registry.values import VersionInfo

STATIC = ("static",)


def torch_model(path: Path, seed: int = 0) -> Path:
    """A tiny torch state_dict saved with torch.save (different bytes per seed)."""
    import torch

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"linear.weight": torch.randn(2, 3), "linear.bias": torch.zeros(2)}, path)
    return path


def sklearn_model(path: Path, seed: int = 0) -> Path:
    """A fitted LogisticRegression pickled with joblib."""
    import joblib
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(40, 3))
    model = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, path)
    return path


def folder_model(root: Path, seed: int = 0) -> Path:
    """A model folder: a config file and torch weights in a sub-folder."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text('{"layers": 1}\n')
    torch_model(root / "weights" / "model.pt", seed)
    return root


@dataclass(frozen=True)
class Keys:
    """A signing key pair (PEM files)."""

    private: Path
    public: Path


def make_keys(folder: Path, name: str = "release") -> Keys:
    folder.mkdir(parents=True, exist_ok=True)
    generate_key_pair(folder / f"{name}.pem", folder / f"{name}.pub")
    return Keys(folder / f"{name}.pem", folder / f"{name}.pub")


def sign(model: Path, keys: Keys, signature: Path | None = None) -> Path:
    signature = signature or model.parent / f"{model.name}.sig"
    sign_model(model, keys.private, signature)
    return signature


def dataset_manifest(folder: Path, keys: Keys) -> Path:
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "train.csv").write_text("x,y\n1,0\n2,1\n")
    manifest = build_dataset_manifest(data, name="train", source="unit test", license="CC0-1.0")
    out = folder / "dataset.manifest.json"
    write_bundle(sign_dataset_manifest(manifest, keys.private), out)
    return out


def gates_for(keys: Keys, **changes: object) -> Gates:
    """Gates for tests: static scans only, the test key trusted; ``changes`` override approve/deploy fields."""
    approve = {k: v for k, v in changes.items() if k in {f.name for f in dataclasses.fields(ApproveGate)}}
    deploy = {k[len("deploy_") :]: v for k, v in changes.items() if k.startswith("deploy_")}
    return Gates(
        approve=ApproveGate(**{"scan_modes": STATIC, "trusted_keys": (str(keys.public),), **approve}),  # type: ignore[arg-type]
        deploy=DeployGate(**deploy),  # type: ignore[arg-type]
        base_dir=keys.public.parent,
    )


ADMIN = Principal("root", frozenset({Role.ADMIN}))
ALICE = Principal("alice", frozenset({Role.SUBMITTER}))
BOB = Principal("bob", frozenset({Role.APPROVER}))
CAROL = Principal("carol", frozenset({Role.DEPLOYER}))
VIC = Principal("vic", frozenset({Role.VIEWER}))


@dataclass
class World:
    """A registry with users root (admin), alice (submitter), bob (approver), carol (deployer), vic (viewer)."""

    registry: Registry
    root: Path
    keys: Keys
    manifest: Path
    url: str
    admin_token: str

    def model(self, name: str = "model.pt", seed: int = 0, signed: bool = True) -> tuple[Path, Path | None]:
        path = torch_model(self.root / f"m{seed}" / name, seed)
        return path, (sign(path, self.keys) if signed else None)

    def register(self, name: str = "fraud", seed: int = 0, **kwargs: object) -> VersionInfo:
        path, signature = self.model(seed=seed)
        options: dict[str, object] = {"signature": signature, "dataset_manifests": [self.manifest]}
        options.update(kwargs)
        return self.registry.register(ALICE, name, path, **options)  # type: ignore[arg-type]

    def approved(self, name: str = "fraud", seed: int = 0) -> VersionInfo:
        version = self.register(name, seed)
        self.registry.scan(ALICE, version.ref, modes=STATIC)
        return self.registry.approve(BOB, version.ref)

    def reopen(self, **options: object) -> Registry:
        """Another Registry on the same database and home (other gates, for instance)."""
        return Registry.open(self.url, home=self.root / "home", **options)  # type: ignore[arg-type]


@contextmanager
def world(url: str, root: Path, **gate_changes: object) -> Iterator[World]:
    keys = make_keys(root / "keys")
    registry = Registry.open(url, home=root / "home", gates=gates_for(keys, **gate_changes))
    try:
        issued = registry.bootstrap(ADMIN.username)
        admin = registry.authenticate(issued.token)
        for who in (ALICE, BOB, CAROL, VIC):
            registry.create_user(admin, who.username, who.roles)
        yield World(registry, root, keys, dataset_manifest(root / "dataset", keys), url, issued.token)
    finally:
        registry.close()


def blob_files(home: Path) -> list[Path]:
    """Every committed blob under ``home``."""
    return sorted(p for p in (home / "blobs" / "sha256").rglob("*") if p.is_file())


def staging_leftovers(home: Path) -> list[Path]:
    tmp = home / "blobs" / "tmp"
    return sorted(p for p in tmp.rglob("*") if p.is_file()) if tmp.exists() else []
