"""``mlwarden.load`` on the benign files people actually have: Python 2 pickles, joblib < 0.10, model archives."""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest

import mlwarden
from mlwarden.core.errors import UnsafeModelError, UsageError
from mlwarden.loader.legacy import read_zfile
from tests.loader.conftest import os_system_pickle

# numpy.uint8 array [0, 128, 255] pickled the way Python 2 did: the array bytes as a SHORT_BINSTRING (U), which
# Python 3 decodes with the unpickler's encoding (ASCII by default: UnicodeDecodeError; numpy uses latin-1).
PY2_ARRAY = (
    b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x00cnumpy\nndarray\nq\x01K\x00\x85U\x01b\x87Rq\x02"
    b"(K\x01K\x03\x85cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    b"\x89U\x03\x00\x80\xfftb."
)


def test_python2_pickle_with_non_ascii_bytes_loads(tmp_path: Path) -> None:
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(PY2_ARRAY)
    path = tmp_path / "py2.pkl"
    path.write_bytes(PY2_ARRAY)
    loaded = mlwarden.load(path, dynamic=False)
    assert isinstance(loaded, np.ndarray)
    assert loaded.tolist() == [0, 128, 255]


def _zf(payload: bytes, width: int) -> bytes:
    return b"ZF" + f"0x{len(payload):x}".encode().ljust(width) + zlib.compress(payload)


@pytest.mark.parametrize("width", [19, 20])  # joblib under Python 3 / Python 2 padded the length differently
def test_joblib_zf_files_are_read_and_analysed_whatever_the_header_width(tmp_path: Path, width: int) -> None:
    good = tmp_path / f"model{width}.gz"
    good.write_bytes(_zf(pickle.dumps({"coef": [1.0, 2.0]}, protocol=2), width))
    assert mlwarden.load(good, dynamic=False) == {"coef": [1.0, 2.0]}
    canary = tmp_path / "pwned"
    bad = tmp_path / f"hostile{width}.gz"
    bad.write_bytes(_zf(os_system_pickle(f"touch {canary}"), width))
    report = mlwarden.scan(bad)
    assert "MLW-PKL-100" in {f.rule_id for f in report.findings}  # the scanner reads past the padding too
    with pytest.raises(UnsafeModelError):
        mlwarden.load(bad, dynamic=False)
    assert not canary.exists()


def test_read_zfile_checks_the_announced_length() -> None:
    data = _zf(b"x" * 100, 19)
    assert read_zfile(io.BytesIO(data), 1000) == b"x" * 100
    with pytest.raises(UsageError):
        read_zfile(io.BytesIO(data[:-4]), 1000)  # truncated


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_model_archive_members_are_each_analysed_and_loaded(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    buf = io.BytesIO()
    torch.save({"weight": torch.arange(4.0)}, buf)
    path = tmp_path / "model.tar.gz"
    _tar(path, {"weights.th": buf.getvalue(), "config.json": b'{"type": "basic"}', "vocab/tokens.txt": b"a\nb\n"})
    loaded = mlwarden.load(path, dynamic=False)
    assert isinstance(loaded, dict)
    assert set(loaded) == {"weights.th", "config.json", "vocab/tokens.txt"}
    assert loaded["weights.th"]["weight"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert loaded["vocab/tokens.txt"] == b"a\nb\n"


def test_a_hostile_member_refuses_the_whole_archive(tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    path = tmp_path / "model.tar.gz"
    _tar(path, {"weights.pkl": os_system_pickle(f"touch {canary}"), "README": b"fine"})
    with pytest.raises(UnsafeModelError):
        mlwarden.load(path, dynamic=False)
    assert not canary.exists()


def test_joblib_09_dump_loads_with_its_companions_and_refuses_foreign_names(tmp_path: Path) -> None:
    from tests.scan.static.test_joblib_legacy import G, _joblib_09, nd_state, wrapper_pickle

    folder = tmp_path / "model"
    path = _joblib_09(folder)  # float, int and object-array companions beside a Python 2 style pickle
    loaded = mlwarden.load(path, dynamic=False)
    assert [a.tolist() for a in loaded[1:]] == [list(range(7)), ["a", "b", None]]
    assert loaded[0].shape == (10,)
    np.save(folder / "m.pkl_01.npy", np.eye(2))  # an ndarray subclass (np.matrix) comes back as a view
    matrix = {**nd_state("m.pkl_01.npy"), "subclass": G("numpy", "matrix")}
    (folder / "m.pkl").write_bytes(wrapper_pickle([matrix]))
    [m] = mlwarden.load(folder / "m.pkl", dynamic=False)
    assert isinstance(m, np.matrix)
    (tmp_path / "outside.npy").write_bytes((folder / "m.pkl_01.npy").read_bytes())
    (folder / "evil.pkl").write_bytes(wrapper_pickle([nd_state("../outside.npy")]))
    with pytest.raises(UnsafeModelError):
        mlwarden.load(folder / "evil.pkl", dynamic=False)


def test_a_framework_error_is_a_usage_error_with_its_reason(tmp_path: Path) -> None:
    # Content that passed the analysis but that the loader cannot build (OrderedDict(1): a TypeError inside the
    # unpickler) gives a UsageError with the loader's message, never another exception type.
    path = tmp_path / "model.pkl"
    path.write_bytes(b"ccollections\nOrderedDict\n(I1\ntR.")
    assert mlwarden.scan(path).exit_code() == 0
    with pytest.raises(UsageError, match="could not load it: TypeError") as info:
        mlwarden.load(path, dynamic=False)
    assert isinstance(info.value.__cause__, TypeError)
