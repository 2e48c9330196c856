"""A registry with signed, scanned, baselined, approved and deployed versions, and a live guard in front of one.

Everything is real: the registry on SQLite (or PostgreSQL), model files written by scikit-learn/joblib and
TorchScript, ECDSA signatures, the registry's own static scan, a baseline captured on reference data, the
approve and deploy gates, and uvicorn listening on 127.0.0.1 on an ephemeral port.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import uvicorn

from mlwarden.integrity.keys import generate_key_pair
from mlwarden.integrity.signing import sign_model
from mlwarden.registry.audit import CheckpointSigner
from mlwarden.registry.roles import Principal
from mlwarden.registry.service import Registry
from mlwarden.serve.app import create_guard_app, create_metrics_app
from mlwarden.serve.calibration import AdversarialSettings, capture
from mlwarden.serve.policy import GuardPolicy
from mlwarden.serve.servable import load_servable
from mlwarden.serve.server import Listen, serve_all, uvicorn_config
from mlwarden.serve.service import GuardService, ServiceOptions

GATES = """
[approve]
scan_required = true
scan_modes = ["static"]
fail_on = "medium"
signature_required = true
trusted_keys = ["release.pub"]
dataset_manifest_required = false
baseline_required = true

[deploy]
verify_digest = true
signature_required = true
trusted_keys = ["release.pub"]
allowed_aliases = ["production", "staging"]
"""

N_FEATURES = 8
#: The metrics token the tests' guards are started with (``/metrics`` needs it on the public port).
METRICS_TOKEN = "metrics-token-for-tests-0123456789"


def tabular_data(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Two gaussian classes in ``N_FEATURES`` dimensions; ``shift`` moves every feature (drift)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    centers = np.where(y[:, None] == 1, 1.0, -1.0) * np.linspace(0.5, 1.5, N_FEATURES)
    x = centers + rng.standard_normal((n, N_FEATURES)) + shift
    return x, y


def train_sklearn(path: Path, seed: int) -> Path:
    """A StandardScaler + LogisticRegression pipeline saved with joblib."""
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = tabular_data(2000, seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=500, random_state=seed)).fit(x, y)
    joblib.dump(model, path)
    return path


def train_torchscript(path: Path, seed: int) -> Path:
    """A small MLP trained for a few epochs and saved as TorchScript (logits out)."""
    import torch

    torch.manual_seed(seed)
    x, y = tabular_data(2000, seed)
    net = torch.nn.Sequential(torch.nn.Linear(N_FEATURES, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
    torch.jit.save(torch.jit.script(net.eval()), str(path))
    return path


@dataclass
class World:
    """The registry, its people and keys, and the versions made so far."""

    registry: Registry
    root: Path
    key: Path
    audit_signer: CheckpointSigner
    tokens: dict[str, str] = field(default_factory=dict)
    principals: dict[str, Principal] = field(default_factory=dict)

    def user(self, name: str, *roles: str, scope: str | None = None) -> str:
        """Create ``name`` with ``roles`` (once) and return a new token for them."""
        admin = self.principals["root"]
        if name not in self.principals:
            self.registry.create_user(admin, name, roles)
        token = self.registry.issue_token(admin, name, scope=scope).token
        self.tokens[name] = token
        self.principals[name] = self.registry.authenticate(token)
        return token

    def release(
        self,
        name: str,
        model: Path,
        *,
        alias: str | None = "production",
        reference: np.ndarray | None = None,
        adversarial: AdversarialSettings | None = None,
    ) -> str:
        """Sign, register, scan, baseline, approve and (with ``alias``) deploy ``model``; returns its ref."""
        reg, p = self.registry, self.principals
        signature = model.parent / f"{model.name}.sig"
        sign_model(model, self.key, signature)
        info = reg.register(p["alice"], name, model, signature=signature)
        reg.scan(p["alice"], info.ref, modes=("static",))
        servable = load_servable(model, dynamic=False)
        data = reference if reference is not None else tabular_data(600, 99)[0]
        baseline = capture(servable, data, adversarial=adversarial or AdversarialSettings(), model_digest=info.digest)
        doc = model.parent / f"{model.name}.baseline.json"
        doc.write_text(baseline.to_json(), encoding="utf-8")
        reg.attach(p["alice"], info.ref, "baseline", doc)
        reg.approve(p["bob"], info.ref)
        if alias is not None:
            reg.deploy(p["dave"], info.ref, alias)
        return info.ref


def make_world(db_url: str, tmp_path: Path) -> World:
    """A registry with root (admin), alice (submitter), bob (approver), dave (deployer: the guard's identity)."""
    root = tmp_path / "world"
    root.mkdir()
    generate_key_pair(root / "release.key", root / "release.pub")
    (root / "gates.toml").write_text(GATES, encoding="utf-8")
    signer = CheckpointSigner.generate(root / "audit.key")
    registry = Registry.open(db_url, home=root / "home", gates=root / "gates.toml", audit_signer=signer)
    world = World(registry, root, root / "release.key", signer)
    token = registry.bootstrap("root").token
    world.tokens["root"] = token
    world.principals["root"] = registry.authenticate(token)
    world.user("alice", "submitter")
    world.user("bob", "approver")
    world.user("dave", "deployer")
    return world


@contextmanager
def opened_world(db_url: str, tmp_path: Path) -> Iterator[World]:
    """:func:`make_world`, closed after the block."""
    world = make_world(db_url, tmp_path)
    try:
        yield world
    finally:
        world.registry.close()


@dataclass
class Live:
    """A guard service and the uvicorn server in front of it (and the metrics listener's, when asked for)."""

    service: GuardService
    url: str
    metrics_url: str | None = None


@contextmanager
def serve(
    world: World,
    model: str,
    policy: GuardPolicy,
    *,
    options: ServiceOptions | None = None,
    before_start: Callable[[GuardService], None] | None = None,
    metrics_token: str | None = METRICS_TOKEN,
    metrics_listener: bool = False,
) -> Iterator[Live]:
    """Run ``GuardService`` for ``model`` behind uvicorn on 127.0.0.1 (ephemeral port) for the block.

    The server is configured as ``mlwarden serve`` configures it (the policy's connection limits); with
    ``metrics_listener`` a second listener on another ephemeral port serves ``/metrics`` (``Live.metrics_url``).
    """
    service = GuardService(world.registry, world.principals["dave"], model, policy, options or ServiceOptions())
    if before_start is not None:
        before_start(service)
    app = create_guard_app(service, metrics_token=metrics_token)
    server = uvicorn.Server(uvicorn_config(app, Listen("127.0.0.1", 0), policy.connections))
    side = None
    if metrics_listener:
        side_app = create_metrics_app(service, token=metrics_token)
        side = uvicorn.Server(uvicorn_config(side_app, Listen("127.0.0.1", 0), policy.connections))
    thread = threading.Thread(target=asyncio.run, args=(serve_all(server, side),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    try:
        while not server.started:
            assert thread.is_alive(), "uvicorn stopped before it started"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        metrics_url = None
        if side is not None:
            metrics_url = f"http://127.0.0.1:{side.servers[0].sockets[0].getsockname()[1]}"
        yield Live(service, f"http://127.0.0.1:{port}", metrics_url)
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        service.close()
        assert not thread.is_alive(), "uvicorn did not shut down"


def metrics_auth() -> dict[str, str]:
    """The Authorization header of :data:`METRICS_TOKEN`."""
    return bearer(METRICS_TOKEN)


def bearer(token: str) -> dict[str, str]:
    """The Authorization header of ``token``."""
    return {"Authorization": f"Bearer {token}"}


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits scaled to [0, 1]: train x, train y, held-out x, held-out y (seeded split)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x / 16.0, y, test_size=0.5, random_state=0, stratify=y)
    return x_train, y_train, x_test, y_test


def train_digits_sklearn(path: Path, labels: Callable[[np.ndarray], np.ndarray] | None = None) -> Path:
    """A LogisticRegression on the digits (``labels`` maps the digit labels to other class labels)."""
    import joblib
    from sklearn.linear_model import LogisticRegression

    x_train, y_train, _, _ = digits_split()
    target = labels(y_train) if labels is not None else y_train
    joblib.dump(LogisticRegression(max_iter=2000).fit(x_train, target), path)
    return path


def train_digits_torch(path: Path) -> tuple[Path, object]:
    """A 64-128-10 MLP on the digits saved as TorchScript; returns the path and the trained module."""
    import torch

    torch.manual_seed(0)
    x_train, y_train, _, _ = digits_split()
    net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    opt = torch.optim.Adam(net.parameters(), lr=0.005)
    xt, yt = torch.tensor(x_train, dtype=torch.float32), torch.tensor(y_train)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
    net.eval()
    torch.jit.save(torch.jit.script(net), str(path))
    return path, net
