"""The one abstraction every static format handler implements, and the lazy registry of handlers.

A handler analyses one artifact of the formats it declares and reports findings through the
:class:`~mlwarden.scan.context.ScanContext`. Handlers do not recurse into containers themselves and do
not enforce global limits: they hand members back with ``ctx.descend(...)``, and the context owns
depth, size, time and member-count limits so every format gets the same protection.

Handlers are imported only when a file of their format is met, so scanning a folder of pickles never
imports the ONNX or HDF5 code (or their optional dependencies).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from mlwarden.artifacts.sniff import Format

if TYPE_CHECKING:
    from mlwarden.artifacts.artifact import Artifact
    from mlwarden.scan.context import ScanContext


class Handler(ABC):
    """Static analysis of one format family."""

    #: Formats this handler accepts (a handler may serve several).
    formats: ClassVar[tuple[Format, ...]] = ()

    @abstractmethod
    def scan(self, artifact: Artifact, ctx: ScanContext) -> None:
        """Analyse ``artifact`` and report findings via ``ctx.report``.

        Raise :class:`~mlwarden.core.errors.LimitExceeded` when a limit stops the analysis; any other
        exception is caught by the context and reported as an analysis error (fail closed).
        """


# Format -> "module:Class". Kept as data so that importing mlwarden imports no handler.
_REGISTRY: dict[Format, str] = {
    Format.PICKLE: "mlwarden.scan.static.pickle.handler:PickleHandler",
    Format.ZIP: "mlwarden.scan.static.archives:ZipHandler",
    Format.TAR: "mlwarden.scan.static.archives:TarHandler",
    Format.GZIP: "mlwarden.scan.static.compressed:CompressedHandler",
    Format.BZIP2: "mlwarden.scan.static.compressed:CompressedHandler",
    Format.XZ: "mlwarden.scan.static.compressed:CompressedHandler",
    Format.LZMA: "mlwarden.scan.static.compressed:CompressedHandler",
    Format.ZLIB: "mlwarden.scan.static.compressed:CompressedHandler",
    Format.JOBLIB_ZF: "mlwarden.scan.static.compressed:CompressedHandler",
    Format.LZ4: "mlwarden.scan.static.compressed:CompressedHandler",
    Format.ZSTD: "mlwarden.scan.static.compressed:CompressedHandler",
    Format.SEVENZIP: "mlwarden.scan.static.archives:OpaqueArchiveHandler",
    Format.RAR: "mlwarden.scan.static.archives:OpaqueArchiveHandler",
    Format.NUMPY: "mlwarden.scan.static.numpy:NumpyHandler",
    Format.SAFETENSORS: "mlwarden.scan.static.safetensors:SafetensorsHandler",
    Format.GGUF: "mlwarden.scan.static.gguf:GgufHandler",
    Format.HDF5: "mlwarden.scan.static.keras_h5:KerasH5Handler",
    Format.ONNX: "mlwarden.scan.static.onnx:OnnxHandler",
    Format.SAVEDMODEL: "mlwarden.scan.static.savedmodel:SavedModelHandler",
    Format.KERAS_CONFIG: "mlwarden.scan.static.keras:KerasConfigHandler",
    Format.HF_CONFIG: "mlwarden.scan.static.hf:HfConfigHandler",
    Format.HF_TOKENIZER_CONFIG: "mlwarden.scan.static.hf:HfTokenizerConfigHandler",
    Format.TEMPLATE: "mlwarden.scan.static.template:TemplateHandler",
    Format.XGBOOST_JSON: "mlwarden.scan.static.trees:TreeModelHandler",
    Format.XGBOOST_UBJ: "mlwarden.scan.static.trees:TreeModelHandler",
    Format.LIGHTGBM_TEXT: "mlwarden.scan.static.trees:TreeModelHandler",
    Format.PYTHON_SOURCE: "mlwarden.scan.static.source:PythonSourceHandler",
}

_INSTANCES: dict[str, Handler] = {}


def handler_for(fmt: Format) -> Handler | None:
    """The handler for ``fmt`` (imported on first use), or ``None`` when mlwarden has nothing to say."""
    target = _REGISTRY.get(fmt)
    if target is None:
        return None
    instance = _INSTANCES.get(target)
    if instance is None:
        module_name, _, class_name = target.partition(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        instance = cls()
        _INSTANCES[target] = instance
    return instance


def load_all_handlers() -> None:
    """Import every handler (documentation and rule catalogue listings need all rules declared)."""
    for fmt in _REGISTRY:
        handler_for(fmt)
