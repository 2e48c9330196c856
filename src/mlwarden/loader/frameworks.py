"""Per-framework loading of the private, already analysed copy of a model.

Every function takes the path of the private copy and returns the loaded object fully materialised in
memory (numpy ``.npz`` archives become a ``dict``, never a lazy ``NpzFile`` holding the file open). With
``restricted`` set, pickle-family formats go through :mod:`mlwarden.loader.restricted`; other formats use the
framework's own safe mode (``keras`` ``safe_mode=True``, safetensors, onnx, gguf have no code-running path).
"""

from __future__ import annotations

import importlib.util
import io
import os
import pickle
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from mlwarden.core.errors import MlwardenError, UsageError
from mlwarden.core.policy import Policy
from mlwarden.loader import legacy
from mlwarden.loader.restricted import RestrictedUnpickler, _refuse, guarded_dispatch, pickle_module, restricted_load
from mlwarden.scan.static.pickle import rules as pickle_rules

Loader = Callable[[Path, Policy, bool, str], Any]


def _pickle(path: Path, policy: Policy, restricted: bool, display: str) -> Any:
    with open(path, "rb") as fh:
        if restricted:
            return restricted_load(fh, policy, display)
        return pickle.load(fh)  # noqa: S301 - analysed first; the caller asked for restricted=False


def _torch(path: Path, policy: Policy, restricted: bool, display: str) -> Any:
    import torch

    if restricted:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=pickle_module(policy, display))
    return torch.load(path, map_location="cpu", weights_only=False)


def _torchscript(path: Path, policy: Policy, restricted: bool, display: str) -> Any:
    import torch

    return torch.jit.load(path, map_location="cpu")


def _joblib(path: Path, policy: Policy, restricted: bool, display: str) -> Any:
    with open(path, "rb") as fh:
        if fh.read(2) == legacy.ZF_MAGIC:  # joblib < 0.10 zlib file: always read by mlwarden's restricted path
            fh.seek(0)
            return _joblib_zf(legacy.read_zfile(fh, policy.limits.max_member_size), path, policy, display)
    if not restricted:
        import joblib

        return joblib.load(path)
    from joblib.numpy_pickle_utils import _validate_fileobject_and_memmap

    with open(path, "rb") as fh, _validate_fileobject_and_memmap(fh, str(path), None) as (fobj, _):
        return _joblib_unpickler(policy, display)(str(path), fobj, True).load()


def _joblib_zf(data: bytes, path: Path, policy: Policy, display: str) -> Any:
    """The payload of a joblib ``ZF`` file: a pickle (companions beside it), an ``.npy``, or raw array bytes."""
    from mlwarden.artifacts.pickle_ops import stream_is_pickle

    if data[:6] == b"\x93NUMPY":
        return _npy(io.BytesIO(data), policy, True, display)
    if stream_is_pickle(io.BytesIO(data)):
        return _joblib_unpickler(policy, display)(str(path), io.BytesIO(data), None).load()
    return data  # a ZNDArrayWrapper companion (.npy.z): the raw bytes of one array


def _joblib_unpickler(policy: Policy, display: str) -> type:
    """Build joblib's ``NumpyUnpickler`` with the restricted ``find_class`` and guarded opcodes (built lazily)."""
    import pickle as std_pickle

    from joblib.numpy_pickle import NumpyArrayWrapper, NumpyUnpickler
    from joblib.numpy_pickle_compat import NDArrayWrapper

    from mlwarden.loader.restricted import _Restrictions

    def load_build(self: Any) -> None:
        std_pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]
        top = self.stack[-1]
        if isinstance(top, NDArrayWrapper):  # joblib < 0.10: the array is in a companion file of the folder
            self.stack[-1] = _legacy_array(top, Path(self._dirname), policy, display)
        elif isinstance(top, NumpyArrayWrapper):
            self.stack.pop()
            if top.dtype.hasobject:  # a nested pickle stream: restricted as well
                array = RestrictedUnpickler(self.file_handle, policy=policy, display=display).load()
            else:
                array = top.read(self, self.ensure_native_byte_order)
            self.stack.append(array)

    base = dict(NumpyUnpickler.dispatch)
    base[std_pickle.BUILD[0]] = load_build

    class RestrictedNumpyUnpickler(NumpyUnpickler):
        dispatch = guarded_dispatch(base)

        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            self.encoding = "latin1"  # Python 2 str (array bytes of joblib < 0.10 files), as numpy reads them
            self._restrictions = _Restrictions(policy, display)

        def find_class(self, module: str, name: str) -> Any:
            return self._restrictions.resolve(module, name)

    return RestrictedNumpyUnpickler


def _legacy_array(wrapper: Any, folder: Path, policy: Policy, display: str) -> Any:
    """Read the companion array a joblib < 0.10 ``NDArrayWrapper``/``ZNDArrayWrapper`` names, restricted."""
    import numpy as np
    from joblib.numpy_pickle_compat import ZNDArrayWrapper

    path = legacy.companion(folder, getattr(wrapper, "filename", None))
    shown = f"{display} ▸ {path.name}"
    if isinstance(wrapper, ZNDArrayWrapper):
        cls = wrapper.init_args[0] if wrapper.init_args else None
        if not (isinstance(cls, type) and issubclass(cls, np.ndarray)):  # allowlisted by the restricted find_class
            raise _refuse(pickle_rules.OPAQUE_CALL, display, f"joblib ZNDArrayWrapper of class {cls!r}")
        array = np.ndarray((0,), "b")  # __setstate__ sets shape and dtype, and checks them against the bytes
        with open(path, "rb") as fh:
            data = legacy.read_zfile(fh, policy.limits.max_member_size)
        array.__setstate__((*wrapper.state, data))
        return array if cls is np.ndarray else array.view(cls)  # np.matrix and kin, as joblib rebuilt them
    subclass = wrapper.subclass  # handed out by the restricted find_class: an allowlisted class
    if not (isinstance(subclass, type) and issubclass(subclass, np.ndarray)):
        raise _refuse(pickle_rules.OPAQUE_CALL, display, f"joblib NDArrayWrapper of class {subclass!r}")
    with open(path, "rb") as fh:
        array = _npy(fh, policy, True, shown)
    if subclass in (np.ndarray, np.memmap) or not isinstance(array, np.ndarray):
        return array
    return array.view(subclass)  # np.matrix and kin: a view, as joblib rebuilt them


def _npy(fh: IO[bytes], policy: Policy, restricted: bool, display: str) -> Any:
    import numpy as np
    from numpy.lib import format as npf

    start = fh.tell()
    version = npf.read_magic(fh)
    read_header = npf.read_array_header_1_0 if version == (1, 0) else npf.read_array_header_2_0  # 3.0 = 2.0 in utf-8
    _shape, _fortran, dtype = read_header(fh, max_header_size=policy.limits.max_header_size)
    if dtype.hasobject:  # numpy pickles the whole array after the header
        if restricted:
            return restricted_load(fh, policy, display)
        return pickle.load(fh)  # noqa: S301 - analysed first; the caller asked for restricted=False
    fh.seek(start)
    return np.lib.format.read_array(fh, allow_pickle=False)


def _numpy(path: Path, policy: Policy, restricted: bool, display: str) -> Any:
    with open(path, "rb") as fh:
        magic = fh.read(6)
        fh.seek(0)
        if magic == b"\x93NUMPY":
            return _npy(fh, policy, restricted, display)
        if not magic.startswith(b"PK"):  # np.load's last resort is pickle
            return _pickle(path, policy, restricted, display)
    out: dict[str, Any] = {}
    with zipfile.ZipFile(path) as zf:  # sizes and ratios were checked by the analysis of these same bytes
        for name in zf.namelist():
            data = zf.read(name)
            key = name[:-4] if name.endswith(".npy") else name
            if data[:6] == b"\x93NUMPY":
                out[key] = _npy(io.BytesIO(data), policy, restricted, f"{display} ▸ {name}")
            else:
                out[key] = data
    return out


def _keras(path: Path, policy: Policy, restricted: bool, display: str) -> Any:
    if "keras" not in sys.modules and "KERAS_BACKEND" not in os.environ:
        if importlib.util.find_spec("tensorflow") is None:
            os.environ["KERAS_BACKEND"] = "torch"  # Keras 3 would otherwise import tensorflow
    import keras

    return keras.saving.load_model(path, safe_mode=True)


def _onnx(path: Path, policy: Policy, restricted: bool, display: str) -> Any:
    import onnx

    return onnx.load(str(path), load_external_data=True)


def _safetensors(path: Path, policy: Policy, restricted: bool, display: str) -> Any:
    if importlib.util.find_spec("torch") is not None:
        from safetensors.torch import load_file

        return load_file(path)
    from safetensors.numpy import load_file as load_numpy

    return load_numpy(path)


def _gguf(path: Path, policy: Policy, restricted: bool, display: str) -> Any:
    from gguf import GGUFReader

    return GGUFReader(path)


def _xgboost(path: Path, policy: Policy, restricted: bool, display: str) -> Any:
    import xgboost

    return xgboost.Booster(model_file=str(path))


def _lightgbm(path: Path, policy: Policy, restricted: bool, display: str) -> Any:
    import lightgbm

    return lightgbm.Booster(model_file=str(path))


LOADERS: dict[str, Loader] = {
    "pickle": _pickle,
    "joblib": _joblib,
    "torch": _torch,
    "torchscript": _torchscript,
    "numpy": _numpy,
    "keras": _keras,
    "onnx": _onnx,
    "safetensors": _safetensors,
    "gguf": _gguf,
    "xgboost": _xgboost,
    "lightgbm": _lightgbm,
}
PICKLE_FAMILY = frozenset({"pickle", "joblib", "torch", "numpy"})


def load_with(framework: str, path: Path, policy: Policy, restricted: bool, display: str) -> Any:
    """Load the private copy at ``path`` with ``framework``.

    Raises:
        UsageError: unknown framework, or the framework could not load the (analysed, harmless) content: a weights-only
            HDF5, a corrupt zip, a pickle of a class that is not installed ... with the framework's own message.
        UnsafeModelError: the restricted unpickler refused a global or an opcode.
    """
    try:
        loader = LOADERS[framework]
    except KeyError:
        raise UsageError(f"unknown framework {framework!r} (expected one of: {', '.join(sorted(LOADERS))})") from None
    try:
        return loader(path, policy, restricted, display)
    except MlwardenError:
        raise
    except Exception as exc:  # re-raised as one error type for "the framework could not load it", with its reason
        raise UsageError(f"{display}: {framework} could not load it: {type(exc).__name__}: {exc}"[:2000]) from exc
