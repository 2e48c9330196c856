"""Keras models in HDF5 (``.h5``/``.hdf5``): the ``model_config`` and ``training_config`` root attributes.

Legacy Keras files keep the model's JSON config in root attributes of the HDF5 file; loading them
deserialises that config exactly like a ``.keras`` archive's ``config.json`` — except that ``safe_mode``
is ignored, so Lambda bytecode runs at load (CVE-2025-9905). The config is analysed by
:func:`mlwarden.scan.static.keras.analyse_keras_config`. An HDF5 file without ``model_config`` (a weights
file or plain data) holds only arrays and attributes and is not reported.

``h5py`` (libhdf5) is an optional dependency (``mlwarden[keras]``). Note that libhdf5 parses the file;
the attributes' sizes are checked before they are read.
"""

from __future__ import annotations

from typing import Any

from mlwarden.artifacts.artifact import Artifact
from mlwarden.artifacts.protobuf import open_seekable
from mlwarden.artifacts.sniff import Format
from mlwarden.core.errors import LimitExceeded
from mlwarden.core.findings import Severity, rule
from mlwarden.scan.context import MissingDependency, ScanContext
from mlwarden.scan.static.base import Handler
from mlwarden.scan.static.keras import MALFORMED, analyse_keras_config, parse_config_text

CONFIG_ATTRS = ("model_config", "training_config")

UNREADABLE = rule(
    "MLW-KERAS-012",
    "Unreadable HDF5 file",
    Severity.MEDIUM,
    cwe=20,
    description="libhdf5 could not open the file (truncated, corrupt or deliberately malformed), so any "
    "Keras model config in it was not analysed.",
    remediation="Re-download the file; do not load an HDF5 model that cannot be analysed.",
)


def _attr_bytes(attrs: Any, name: str, limit: int) -> bytes:
    """An attribute's raw value, refusing attributes larger than ``limit`` before reading them."""
    size = attrs.get_id(name).get_storage_size()
    if size > limit:
        raise LimitExceeded("max_text_size", f"HDF5 attribute {name} is {size} bytes")
    value = attrs[name]
    if hasattr(value, "tobytes") and not isinstance(value, bytes | str):
        value = value.tobytes() if getattr(value, "ndim", 1) == 0 else value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes):
        return value
    raise ValueError(f"attribute {name} is {type(value).__name__}, not a JSON string")


class KerasH5Handler(Handler):
    """Static analysis of the Keras model config stored in an HDF5 file."""

    formats = (Format.HDF5,)

    def scan(self, artifact: Artifact, ctx: ScanContext) -> None:
        """Read the config attributes (size-checked) and analyse them like a ``config.json``."""
        try:
            import h5py
        except ImportError:
            raise MissingDependency("h5py", "keras") from None
        stream = open_seekable(artifact, ctx.limits.max_member_size)
        with stream:
            try:
                h5 = h5py.File(stream, "r")
            except (OSError, ValueError) as exc:
                ctx.report(UNREADABLE.finding(artifact.location(), f"{type(exc).__name__}: {exc}"[:300]))
                return
            with h5:
                for name in CONFIG_ATTRS:
                    if name not in h5.attrs:
                        continue
                    try:
                        config = parse_config_text(_attr_bytes(h5.attrs, name, ctx.limits.max_text_size))
                    except (ValueError, TypeError, OSError) as exc:
                        ctx.report(MALFORMED.finding(artifact.location(phase=name), f"{name}: {exc}"[:300]))
                        continue
                    analyse_keras_config(config, artifact, ctx, name)
