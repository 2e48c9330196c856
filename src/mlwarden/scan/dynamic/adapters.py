"""How each framework goes through the four phases, as its users do it (run inside the sandbox only).

Each adapter loads the model the *permissive* way real code does (``weights_only=False``, ``allow_pickle=True``,
``safe_mode=False``, a non-sandboxed Jinja environment): the sandbox, not the loader, is the protection, and
the point is to see what the file does when someone loads it carelessly. Inputs for the inference phase are
synthesised from the model's own metadata.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Adapter:
    """The four phases of one framework."""

    name: str

    def import_framework(self) -> Any:
        """Phase 1: import the framework."""
        raise NotImplementedError

    def deserialize(self, path: str) -> Any:
        """Phase 2: read the file into objects."""
        raise NotImplementedError

    def instantiate(self, obj: Any) -> Any:
        """Phase 3: obtain the model object."""
        return obj

    def infer(self, model: Any) -> Any:
        """Phase 4: one prediction on a synthesised input (when the object is a model)."""
        return None


def _zeros_for_features(model: Any) -> Any:
    import numpy as np

    names = getattr(model, "feature_names_in_", None)
    if names is not None:  # column transformers select by name: give them a frame
        import pandas as pd

        return pd.DataFrame([[0] * len(names)], columns=list(names))
    n = getattr(model, "n_features_in_", None)
    if n is None:
        return None
    return np.zeros((1, int(n)))


class PickleAdapter(Adapter):
    """Plain pickle files."""

    def import_framework(self) -> Any:
        import pickle

        return pickle

    def deserialize(self, path: str) -> Any:
        import pickle

        with open(path, "rb") as fh:
            return pickle.load(fh)  # noqa: S301 - deliberately, inside the sandbox

    def infer(self, model: Any) -> Any:
        x = _zeros_for_features(model) if hasattr(model, "predict") else None
        return model.predict(x) if x is not None else None


class JoblibAdapter(PickleAdapter):
    """joblib dumps (plain or compressed), usually scikit-learn estimators."""

    def import_framework(self) -> Any:
        import joblib
        import sklearn  # noqa: F401 - estimators need it; importing it here keeps it in the import phase

        return joblib

    def deserialize(self, path: str) -> Any:
        import joblib

        return joblib.load(path)


class TorchAdapter(Adapter):
    """PyTorch checkpoints (zip or legacy) and full modules."""

    def import_framework(self) -> Any:
        import torch

        torch.set_num_threads(1)
        return torch

    def deserialize(self, path: str) -> Any:
        import torch

        return torch.load(path, map_location="cpu", weights_only=False)  # deliberately permissive

    def instantiate(self, obj: Any) -> Any:
        import torch

        if isinstance(obj, torch.nn.Module):
            return obj.eval()
        if isinstance(obj, dict):
            for key in ("model", "module", "net"):
                if isinstance(obj.get(key), torch.nn.Module):
                    return obj[key].eval()
        return obj

    def infer(self, model: Any) -> Any:
        import torch

        if not isinstance(model, torch.nn.Module):
            return None
        x = _torch_input(model)
        if x is None:
            return None
        with torch.no_grad():
            if x.dim() != 4:
                return model(x)
            error: Exception | None = None
            for side in (32, 16, 28, 64, 224, 8):  # image models fix their input size in their first Linear
                try:
                    return model(torch.zeros(1, x.shape[1], side, side))
                except RuntimeError as exc:
                    error = exc
            raise error  # type: ignore[misc]


def _torch_input(model: Any) -> Any:
    import torch

    for layer in model.modules():
        if isinstance(layer, torch.nn.Linear):
            return torch.zeros(1, layer.in_features)
        if isinstance(layer, torch.nn.Conv2d):
            return torch.zeros(1, layer.in_channels, 32, 32)
        if isinstance(layer, torch.nn.Conv1d):
            return torch.zeros(1, layer.in_channels, 32)
        if isinstance(layer, torch.nn.Embedding):
            return torch.zeros(1, 4, dtype=torch.long)
        if isinstance(layer, torch.nn.LSTM | torch.nn.GRU | torch.nn.RNN):
            return torch.zeros(1, 4, layer.input_size) if layer.batch_first else torch.zeros(4, 1, layer.input_size)
    return None


class TorchScriptAdapter(TorchAdapter):
    """TorchScript archives (``torch.jit.save``)."""

    def deserialize(self, path: str) -> Any:
        import torch

        return torch.jit.load(path, map_location="cpu")

    def instantiate(self, obj: Any) -> Any:
        return obj.eval()

    def infer(self, model: Any) -> Any:
        import torch

        params = list(model.parameters())
        if params and params[0].dim() == 2:
            with torch.no_grad():
                return model(torch.zeros(1, params[0].shape[1]))
        return None


class NumpyAdapter(Adapter):
    """``.npy`` / ``.npz``; object arrays are unpickled when accessed, so every array is materialised."""

    def import_framework(self) -> Any:
        import numpy

        return numpy

    def deserialize(self, path: str) -> Any:
        import numpy as np

        return np.load(path, allow_pickle=True)  # deliberately permissive

    def instantiate(self, obj: Any) -> Any:
        if hasattr(obj, "files"):  # NpzFile: members load lazily
            return {name: obj[name] for name in obj.files}
        return obj


class KerasAdapter(Adapter):
    """Keras v3 ``.keras`` and HDF5 models (torch backend)."""

    def import_framework(self) -> Any:
        os.environ.setdefault("KERAS_BACKEND", "torch")
        import keras

        return keras

    def deserialize(self, path: str) -> Any:
        import keras

        return keras.saving.load_model(path, safe_mode=False, compile=False)

    def infer(self, model: Any) -> Any:
        import numpy as np

        shape = getattr(model, "input_shape", None)
        if not isinstance(shape, tuple):
            return None
        return model(np.zeros((1, *[d or 1 for d in shape[1:]]), dtype="float32"))


class OnnxAdapter(Adapter):
    """ONNX models through onnxruntime (external data resolved next to the model, as the runtime does)."""

    def import_framework(self) -> Any:
        import onnxruntime

        return onnxruntime

    def deserialize(self, path: str) -> Any:
        import onnxruntime

        return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

    def infer(self, model: Any) -> Any:
        import numpy as np

        feeds = {}
        for inp in model.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
            dtype = np.int64 if "int64" in inp.type else np.float32
            feeds[inp.name] = np.zeros(shape, dtype=dtype)
        return model.run(None, feeds)


_DEMO_MESSAGES = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Hello"}]


class JinjaAdapter(Adapter):
    """Chat templates (GGUF metadata, ``tokenizer_config.json``, ``*.jinja``), rendered as loaders do.

    transformers and llama-cpp-python render them with a plain, non-sandboxed Jinja environment; so does this.
    """

    def import_framework(self) -> Any:
        import jinja2

        return jinja2

    def deserialize(self, path: str) -> Any:
        with open(path, "rb") as fh:
            head = fh.read(4)
        if head == b"GGUF":
            from gguf import GGUFReader

            reader = GGUFReader(path)
            field = reader.fields.get("tokenizer.chat_template")
            if field is None:
                return None
            return bytes(field.parts[field.data[0]]).decode("utf-8")
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        if path.endswith(".json"):
            import json

            value = json.loads(text).get("chat_template")
            if isinstance(value, list):
                value = value[0].get("template") if value else None
            return value
        return text

    def instantiate(self, obj: Any) -> Any:
        import jinja2

        if not isinstance(obj, str):
            return None
        return jinja2.Environment().from_string(obj)  # noqa: S701 - deliberately unsandboxed, as loaders do

    def infer(self, model: Any) -> Any:
        if model is None:
            return None
        return model.render(messages=_DEMO_MESSAGES, add_generation_prompt=True, bos_token="<s>", eos_token="</s>")


ADAPTERS: dict[str, Adapter] = {
    "pickle": PickleAdapter("pickle"),
    "joblib": JoblibAdapter("joblib"),
    "torch": TorchAdapter("torch"),
    "torchscript": TorchScriptAdapter("torchscript"),
    "numpy": NumpyAdapter("numpy"),
    "keras": KerasAdapter("keras"),
    "onnx": OnnxAdapter("onnx"),
    "jinja": JinjaAdapter("jinja"),
}

#: import name that must be installed for each framework's dynamic analysis
REQUIRES: dict[str, str] = {
    "pickle": "pickle",
    "joblib": "joblib",
    "torch": "torch",
    "torchscript": "torch",
    "numpy": "numpy",
    "keras": "keras",
    "onnx": "onnxruntime",
    "jinja": "jinja2",
}
