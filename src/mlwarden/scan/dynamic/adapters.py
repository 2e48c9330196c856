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


#: the large magnitude the infer phase tries (positive and negative)
LARGE = 1.0e6


def variants(base: Any, low: Any = None, high: Any = None) -> list[Any]:
    """Inputs of ``base``'s shape and dtype (a numpy array or torch tensor) that reach input-dependent branches.

    Zeros first (the historical input), then ones, a seeded random normal draw, large positive and negative
    magnitudes, and — where the model's metadata gives a range (``low``/``high``: scalars or per-feature arrays)
    — its bounds and a uniform draw inside them. Integer inputs (token ids) get 0, 1, random ids below ``high``
    and ``high - 1``.
    """
    import numpy as np

    torch_like = type(base).__module__.startswith("torch")
    array = base.detach().cpu().numpy() if torch_like else np.asarray(base)
    shape, dtype = array.shape, array.dtype
    rng = np.random.default_rng(0)
    out: list[Any] = []
    if np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.bool_):
        top = int(np.max(high)) if high is not None else 2
        out = [np.zeros(shape, dtype), np.ones(shape, dtype) if top > 1 else np.zeros(shape, dtype)]
        out += [rng.integers(0, max(top, 1), size=shape).astype(dtype), np.full(shape, max(top - 1, 0), dtype)]
    else:
        out = [np.zeros(shape, dtype), np.ones(shape, dtype), rng.standard_normal(shape).astype(dtype)]
        out += [np.full(shape, LARGE, dtype), np.full(shape, -LARGE, dtype)]
        if low is not None and high is not None:
            lo = np.broadcast_to(np.asarray(low, dtype=np.float64), shape[-1:])
            hi = np.broadcast_to(np.asarray(high, dtype=np.float64), shape[-1:])
            out += [np.broadcast_to(lo, shape).astype(dtype), np.broadcast_to(hi, shape).astype(dtype)]
            out.append((lo + (hi - lo) * rng.random(shape)).astype(dtype))
    if torch_like:
        import torch

        return [torch.from_numpy(np.ascontiguousarray(a)) for a in out]
    return out


def run_variants(call: Any, inputs: list[Any]) -> Any:
    """``call`` on every input: the first one's error is the phase's; later inputs may fail (out of range)."""
    first = call(inputs[0])
    for x in inputs[1:]:
        try:
            call(x)
        except Exception:  # noqa: BLE001, S112 - an input outside the model's domain: the next one is tried
            continue
    return first


def _feature_range(model: Any) -> tuple[Any, Any]:
    """``(low, high)`` per input feature from fitted scikit-learn metadata, where an estimator records one."""
    for step in [model, *[s for _, s in getattr(model, "steps", [])]]:
        low, high = getattr(step, "data_min_", None), getattr(step, "data_max_", None)
        if low is not None and high is not None:
            return low, high
        mean, scale = getattr(step, "mean_", None), getattr(step, "scale_", None)
        if mean is not None and scale is not None:
            return mean - 3 * scale, mean + 3 * scale
    return None, None


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
        if x is None:
            return None
        if not hasattr(x, "columns"):  # a plain matrix: several inputs (a frame keeps its zeros: its dtypes vary)
            low, high = _feature_range(model)
            return run_variants(model.predict, variants(x, low, high))
        return model.predict(x)


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
            if x.dim() == 4:
                error: Exception | None = None
                for side in (32, 16, 28, 64, 224, 8):  # image models fix their input size in their first Linear
                    try:
                        model(torch.zeros(1, x.shape[1], side, side))
                    except RuntimeError as exc:
                        error = exc
                        continue
                    x = torch.zeros(1, x.shape[1], side, side)
                    break
                else:
                    raise error  # type: ignore[misc]
            return run_variants(model, variants(x, high=_token_range(model)))


def _token_range(model: Any) -> int | None:
    """The vocabulary size of the model's first embedding (the range of its integer inputs), if it has one."""
    import torch

    for layer in model.modules():
        if isinstance(layer, torch.nn.Embedding):
            return int(layer.num_embeddings)
    return None


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
            with torch.no_grad():  # several inputs: a scripted branch on the input's values must fire
                return run_variants(model, variants(torch.zeros(1, params[0].shape[1])))
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
        return run_variants(model, variants(np.zeros((1, *[d or 1 for d in shape[1:]]), dtype="float32")))


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

        feeds: dict[str, list[Any]] = {}
        for inp in model.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
            dtype = np.int64 if "int64" in inp.type else np.float32
            feeds[inp.name] = variants(np.zeros(shape, dtype=dtype))
        count = min((len(v) for v in feeds.values()), default=1)
        inputs = [{name: values[i] for name, values in feeds.items()} for i in range(count)]
        return run_variants(lambda feed: model.run(None, feed), inputs)


_DEMO_MESSAGES = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Hello"}]
#: Python builtins a template has no business naming (plain Jinja does not define them: a template naming them is
#: reaching for the interpreter, whether or not the lookup then fails)
_TEMPLATE_BUILTINS = frozenset(
    {"eval", "exec", "compile", "getattr", "setattr", "delattr", "open", "globals", "locals", "vars", "breakpoint"}
)
#: attributes that lead from a value to the interpreter's internals (jinja2.sandbox refuses them, with "_*")
_TEMPLATE_UNSAFE = frozenset(
    {"mro", "func_globals", "func_code", "gi_frame", "gi_code", "cr_frame", "cr_code", "ag_frame", "ag_code"}
    | {"f_globals", "f_locals", "f_builtins", "f_back", "f_code", "tb_frame", "tb_next"}
)


def _unsafe_lookup(attribute: Any) -> bool:
    return type(attribute) is str and (attribute.startswith("_") or attribute in _TEMPLATE_UNSAFE)


def observed_environment() -> Any:
    """A plain (unsandboxed) Jinja environment that reports a template reaching for the interpreter at run time.

    Every attribute or item lookup of an interpreter internal (``__class__``, ``__globals__``, ``mro``...), also
    through ``|attr``, becomes an ``mlwarden.template`` audit event. Nothing is refused: the template renders
    exactly as loaders render it. (The environment object is not reachable from templates; undefined names keep
    jinja2's own Undefined class, so an escape walks the same objects as in a real loader.)
    """
    import sys

    import jinja2

    audit, unsafe = sys.audit, _unsafe_lookup

    class ObservedEnvironment(jinja2.Environment):
        def getattr(self, obj: Any, attribute: str) -> Any:
            if unsafe(attribute):
                audit("mlwarden.template", f"attribute {attribute}")
            return super().getattr(obj, attribute)

        def getitem(self, obj: Any, argument: Any) -> Any:
            if unsafe(argument):
                audit("mlwarden.template", f"item {argument}")
            return super().getitem(obj, argument)

    env = ObservedEnvironment()  # deliberately unsandboxed, as loaders do
    plain_attr = env.filters["attr"]

    def attr(environment: Any, obj: Any, name: Any) -> Any:
        if unsafe(name):
            audit("mlwarden.template", f"attr filter {name}")
        return plain_attr(environment, obj, name)

    attr.jinja_pass_arg = getattr(plain_attr, "jinja_pass_arg", None)  # type: ignore[attr-defined]
    env.filters["attr"] = attr
    return env


def compiled_lookups(env: Any, source: str) -> list[str]:
    """Lookups of interpreter internals and Python builtins in the template jinja2 just compiled.

    What the generated code would ask for, whether or not rendering gets there (an escape that fails early on
    an undefined name, or that only a certain conversation reaches).
    """
    from jinja2 import nodes

    out = []
    for node in env.parse(source).find_all((nodes.Getattr, nodes.Getitem, nodes.Name, nodes.Filter)):
        if isinstance(node, nodes.Getattr) and _unsafe_lookup(node.attr):
            out.append(f"attribute {node.attr}")
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and _unsafe_lookup(node.arg.value):
            out.append(f"item {node.arg.value}")
        elif isinstance(node, nodes.Name) and (node.name.startswith("__") or node.name in _TEMPLATE_BUILTINS):
            out.append(f"name {node.name}")
        elif isinstance(node, nodes.Filter) and node.name == "attr" and node.args:
            arg = node.args[0]
            if isinstance(arg, nodes.Const) and _unsafe_lookup(arg.value):
                out.append(f"attr filter {arg.value}")
    return list(dict.fromkeys(out))


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
        import sys

        if not isinstance(obj, str):
            return None
        env = observed_environment()
        template = env.from_string(obj)
        for lookup in compiled_lookups(env, obj):
            sys.audit("mlwarden.template", f"compiled {lookup}")
        return template

    def infer(self, model: Any) -> Any:
        if model is None:
            return None
        tokens = {"bos_token": "<s>", "eos_token": "</s>"}
        return model.render(messages=_DEMO_MESSAGES, add_generation_prompt=True, **tokens)


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
