"""Keras model configurations (``config.json`` of ``.keras`` archives, Keras 2 JSON, HDF5 ``model_config``).

A Keras config is a tree of ``{"module", "class_name", "config", "registered_name"}`` objects that
``load_model`` turns back into Python objects, so the config decides what code runs at load time:

* **Lambda layers** carry marshalled Python bytecode (``"class_name": "__lambda__"`` in Keras 3, a
  ``[code, defaults, closure]`` list in Keras 2) that runs when the model is called — and at load for
  HDF5 files, where ``safe_mode`` is ignored (CVE-2024-3660, CVE-2025-9905). CRITICAL. The bytecode is
  base64-decoded but never unmarshalled: ``marshal`` is not safe against crafted input (it can crash the
  interpreter) and is version-specific, so the preview lists the identifier-like strings found in the
  marshal stream (``co_names``, constants) by a bounded byte scan instead. Lambdas that call a named
  function are HIGH.
* **Imports outside Keras**: ``module``/``class_name`` naming e.g. ``os.system`` or ``builtins.exec``
  (CVE-2025-1550) — HIGH; Keras APIs that are not model components (``keras.utils.get_file``,
  ``keras.models.load_model``, ``keras.config.enable_unsafe_deserialization``: CVE-2025-8747,
  CVE-2025-9906) — HIGH.
* **Custom objects** (``module`` null or a user package, ``registered_name`` like ``"MyPkg>MyLayer"``)
  need user code to load — MEDIUM. Keras writes ``"module": "builtins"`` for functions defined in
  ``__main__`` and resolves them only among registered objects, so those are custom objects too unless
  the name is a dangerous builtin.
* **Loader gadgets**: ``TorchModuleWrapper`` embeds a ``torch.save`` pickle (CVE-2025-49655; the decoded
  bytes are handed back to the dispatcher, so the pickle is analysed); ``TFSMLayer`` loads an external
  SavedModel (CVE-2026-1462); lookup layers whose ``vocabulary`` is a path read a local file or URL at
  load (CVE-2025-12058); layer names with ``..`` (CVE-2026-12479); ``TFOpLambda`` calling TensorFlow
  file, Python or summary functions.

This module is the entry point (handler, :func:`analyse_keras_config`, JSON parsing); the rule
declarations and name tables are in :mod:`~mlwarden.scan.static.keras_rules` and the config walk in
:mod:`~mlwarden.scan.static.keras_checks`. Both are re-exported here.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any, BinaryIO

from mlwarden.artifacts.artifact import Artifact
from mlwarden.artifacts.sniff import Format
from mlwarden.core.errors import LimitExceeded
from mlwarden.scan.context import ScanContext
from mlwarden.scan.static.base import Handler
from mlwarden.scan.static.keras_checks import MAX_CONFIG_DEPTH, MAX_CONFIG_NODES, ConfigAnalyser, marshal_strings
from mlwarden.scan.static.keras_rules import (
    CUSTOM_OBJECT,
    EXTERNAL_MODEL,
    FOREIGN_IMPORT,
    KERAS_PACKAGES,
    LAMBDA_BYTECODE,
    LAMBDA_FUNCTION,
    MALFORMED,
    NAME_TRAVERSAL,
    NON_MODELING_API,
    TFOP_DANGER,
    TORCH_PICKLE,
    VOCAB_FILE,
)

__all__ = [
    "CUSTOM_OBJECT",
    "EXTERNAL_MODEL",
    "FOREIGN_IMPORT",
    "KERAS_PACKAGES",
    "LAMBDA_BYTECODE",
    "LAMBDA_FUNCTION",
    "MALFORMED",
    "MAX_CONFIG_DEPTH",
    "MAX_CONFIG_NODES",
    "NAME_TRAVERSAL",
    "NON_MODELING_API",
    "TFOP_DANGER",
    "TORCH_PICKLE",
    "VOCAB_FILE",
    "KerasConfigHandler",
    "analyse_keras_config",
    "marshal_strings",
    "parse_config_text",
]

_EXAMPLES = 5


def analyse_keras_config(config: Any, artifact: Artifact, ctx: ScanContext, origin: str) -> None:
    """Analyse a parsed Keras config (any Keras version) and report findings against ``artifact``.

    Args:
        config: the parsed JSON.
        artifact: where the config came from (a ``config.json`` member, or an HDF5 file).
        ctx: the scan context.
        origin: where in the artifact the config sits (``"config.json"``, ``"model_config"`` attribute).
    """
    analyser = ConfigAnalyser(ctx)
    where = artifact.location(phase=None if origin == "config.json" else origin)
    try:
        analyser.walk(config)
    finally:
        for target, evidence, paths, details in analyser.hits.groups.values():
            count = f" ({len(paths)} occurrences)" if len(paths) > 1 else ""
            ctx.report(
                target.finding(
                    where,
                    f"{evidence}{count} at {paths[0]}",
                    origin=origin,
                    paths=paths[:_EXAMPLES],
                    count=len(paths),
                    **details,
                )
            )
    for path, data in analyser.embedded:
        child = artifact.child(f"<{origin}:{path}>", len(data), _opener(data), data[: 64 * 1024])
        ctx.descend(child)


def _opener(data: bytes) -> Callable[[], BinaryIO]:
    return lambda: io.BytesIO(data)


def parse_config_text(data: bytes) -> Any:
    """Parse config JSON bytes; raises ``ValueError`` (incl. ``UnicodeDecodeError``) when malformed."""
    return json.loads(data.decode("utf-8-sig"))


class KerasConfigHandler(Handler):
    """Static analysis of Keras JSON model configs (``config.json`` in ``.keras`` archives, ``to_json``)."""

    formats = (Format.KERAS_CONFIG,)

    def scan(self, artifact: Artifact, ctx: ScanContext) -> None:
        """Parse the JSON (bounded by ``max_text_size``) and analyse it."""
        limit = ctx.limits.max_text_size
        if artifact.size is not None and artifact.size > limit:
            raise LimitExceeded("max_text_size", f"Keras config is {artifact.size} bytes")
        with artifact.open() as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise LimitExceeded("max_text_size", f"Keras config is larger than {limit} bytes")
        try:
            config = parse_config_text(data)
        except ValueError as exc:
            ctx.report(MALFORMED.finding(artifact.location(), f"invalid JSON: {exc}"[:300]))
            return
        if not isinstance(config, dict):
            ctx.report(MALFORMED.finding(artifact.location(), f"top level is {type(config).__name__}"))
            return
        analyse_keras_config(config, artifact, ctx, "config.json")
