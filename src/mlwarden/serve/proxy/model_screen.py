"""A model-based prompt screen: a local ONNX classifier, scanned by mlwarden and run with onnxruntime.

The classifier is a file the operator ships (``proxy.screen.model: PATH``); it is **never downloaded** at run
time. It goes through :func:`mlwarden.loader.load` like any other model — copied privately, scanned, loaded only
if the scan passes — and onnxruntime is given exactly the bytes that were scanned.

The input contract is deliberately small so that any trainer can produce it: one float32 input of shape
``[N, D]`` holding :func:`hashed_ngrams` features (character 1- to 3-grams of the :func:`normalize`-d text,
hashed with BLAKE2b into ``D`` buckets, L2-normalised); ``D`` is read from the graph. The first output is either
``[N]``/``[N, 1]`` probabilities of "injection" or ``[N, 2]`` class probabilities (the last column is used).
A logistic regression or a small MLP over these features exports to such a graph with skl2onnx or onnx.helper.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mlwarden.core.errors import UnsafeModelError, UsageError
from mlwarden.guard.prompt_screen import PromptScreen, ScreenReason, ScreenResult, normalize

#: Longest text given to the classifier (its start; the heuristic screen sees the whole text).
MAX_MODEL_CHARS = 20_000


def hashed_ngrams(text: str, dim: int, orders: tuple[int, ...] = (1, 2, 3)) -> np.ndarray:
    """The classifier's features: counts of hashed character n-grams of the normalised text, L2-normalised."""
    out = np.zeros(dim, dtype=np.float32)
    folded = normalize(text)[:MAX_MODEL_CHARS]
    for n in orders:
        for i in range(len(folded) - n + 1):
            digest = hashlib.blake2b(folded[i : i + n].encode("utf-8"), digest_size=8).digest()
            out[int.from_bytes(digest, "little") % dim] += 1.0
    norm = float(np.linalg.norm(out))
    return out / norm if norm > 0 else out


class OnnxScreen(PromptScreen):
    """A prompt screen running a local ONNX classifier (see the module docstring)."""

    name: ClassVar[str] = "onnx"

    def __init__(self, path: str | Path, threshold: float = 0.5) -> None:
        import onnxruntime as ort

        import mlwarden

        source = Path(path)
        if not source.is_file():
            raise UsageError(f"the screen model {source} is not a file (models are never downloaded)")
        try:
            proto: Any = mlwarden.load(source, "onnx", dynamic=False)
        except UnsafeModelError as exc:
            raise UsageError(f"the screen model {source} failed the scan: {exc}") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                proto.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types for a bad graph
            raise UsageError(f"the screen model {source} cannot be run: {type(exc).__name__}") from None
        inputs = self.session.get_inputs()
        dim = inputs[0].shape[-1] if inputs and len(inputs[0].shape) == 2 else None
        if len(inputs) != 1 or not isinstance(dim, int) or dim < 1:
            raise UsageError(f"the screen model {source} must take one float input of shape [N, D] with a fixed D")
        self.input_name, self.dim, self.threshold = inputs[0].name, dim, threshold
        self.output_name = self.session.get_outputs()[0].name

    def score(self, text: str) -> float:
        """The classifier's probability that ``text`` is an injection."""
        features = hashed_ngrams(text, self.dim)[None, :]
        raw = np.asarray(self.session.run([self.output_name], {self.input_name: features})[0], dtype=np.float64)
        value = raw.reshape(raw.shape[0], -1)[0, -1]
        if not np.isfinite(value) or not 0.0 <= value <= 1.0:
            raise UsageError(f"the screen model returned {value}, not a probability")
        return float(value)

    def screen(self, text: str) -> ScreenResult:  # noqa: D102 - documented on PromptScreen
        score = round(self.score(text), 6)
        flagged = score >= self.threshold
        reasons = (ScreenReason("classifier", score, f"ONNX classifier probability {score:.3f}"),) if flagged else ()
        return ScreenResult(self.name, score, self.threshold, flagged, reasons)
