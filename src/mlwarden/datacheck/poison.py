"""Backdoor poisoning of image data, given a model trained on it: planned, reported as not run until then.

Not implemented yet: asking for it yields a check with ``status: error`` and the reason, so a report never
suggests that a backdoor check ran and found nothing. The plan: load the model only through
:func:`mlwarden.load`, wrap it in ART's ``PyTorchClassifier``, and run ``SpectralSignatureDefense`` and
``ActivationDefence`` per class to name the suspicious samples and the target class.
"""

from __future__ import annotations

from mlwarden.datacheck.model import CheckResult, DataCheckError
from mlwarden.datacheck.readers import TableSource


def backdoor_check(source: TableSource, model: str | None, *, seed: int) -> CheckResult:
    """Raise :class:`DataCheckError` saying why the check cannot run (reported as ``status: error``)."""
    if source.format != "images":
        raise DataCheckError("the backdoor check applies to image folders only")
    if model is None:
        raise DataCheckError("the backdoor check needs --model (the model trained on this data)")
    raise DataCheckError("the backdoor check (ART spectral signatures, activation clustering) is not implemented yet")
