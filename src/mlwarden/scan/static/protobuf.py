"""Protobuf wire-format reading for ONNX and TensorFlow SavedModel (placeholder until implemented)."""

from __future__ import annotations

from mlwarden.artifacts.artifact import Artifact
from mlwarden.artifacts.sniff import Format


def sniff_protobuf_model(artifact: Artifact) -> Format | None:
    """Return ``Format.ONNX`` or ``Format.SAVEDMODEL`` when the content is such a protobuf message."""
    return None
