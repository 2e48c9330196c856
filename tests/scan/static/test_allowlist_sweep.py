"""The allowlist against whole libraries: every scikit-learn estimator and every torch.nn layer, pickled the
ways people save them, must scan clean. (The allowlist is only as good as the benign models it was tried on.)"""

from __future__ import annotations

import inspect
import io
import pickle
import warnings
from pathlib import Path

import pytest

from mlwarden.core.findings import Severity
from tests.conftest import scan_bytes


def _flagged(tmp_path: Path, data: bytes) -> list[tuple[str, str]]:
    result = scan_bytes(tmp_path, data, "model.bin")
    return [(f.rule_id, f.detail("global") or f.evidence[:80]) for f in result.findings if f.severity >= Severity.LOW]


def test_every_sklearn_estimator(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    joblib = pytest.importorskip("joblib")
    from sklearn.utils import all_estimators

    rng = np.random.default_rng(0)
    x = rng.random((40, 4))
    y = (x[:, 0] > 0.5).astype(int)
    checked, bad = 0, {}
    for name, cls in all_estimators():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                est = cls()
                try:
                    est.fit(x, y)
                except Exception:  # noqa: BLE001 - unsupervised or needs other data
                    est.fit(x)
            except Exception:  # noqa: BLE001, S112 - estimators that need required arguments
                continue
        buf = io.BytesIO()
        joblib.dump(est, buf)
        for data in (pickle.dumps(est, protocol=5), buf.getvalue()):
            checked += 1
            if flagged := _flagged(tmp_path, data):
                bad[name] = flagged
    assert checked > 250
    assert bad == {}


def test_every_torch_nn_layer_as_a_full_module(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    nn = torch.nn
    checked, bad = 0, {}
    for name in nn.modules.__all__:
        cls = getattr(nn, name, None)
        if not (inspect.isclass(cls) and issubclass(cls, nn.Module)) or name.startswith("Lazy"):
            continue  # uninitialised lazy modules pickle bound-method hooks (getattr): see README limitations
        module = None
        for args in ((), (4,), (4, 4), (4, 4, 3), (2, 4, 4)):
            try:
                module = cls(*args)
                break
            except Exception:  # noqa: BLE001, S112 - estimators that need required arguments
                continue
        if module is None:
            continue
        for new_format in (True, False):
            buf = io.BytesIO()
            torch.save(module, buf, _use_new_zipfile_serialization=new_format)
            checked += 1
            if flagged := _flagged(tmp_path, buf.getvalue()):
                bad[name] = flagged
    assert checked > 150
    assert bad == {}


def test_training_checkpoint_with_optimizer_and_scheduler_objects(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    for name in ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam"):
        opt = getattr(torch.optim, name)(model.parameters(), lr=0.1)
        model(torch.randn(3, 4)).sum().backward()
        opt.step()
        sched = torch.optim.lr_scheduler.StepLR(opt, 2)
        buf = io.BytesIO()
        torch.save(
            {
                "model": model.state_dict(),
                "opt_state": opt.state_dict(),
                "optimizer": opt,
                "sched_state": sched.state_dict(),
                "rng": torch.get_rng_state(),
                "epoch": 3,
            },
            buf,
        )
        assert _flagged(tmp_path, buf.getvalue()) == [], name
