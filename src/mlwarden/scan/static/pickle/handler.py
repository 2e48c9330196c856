"""The pickle handler: raw pickles, joblib dumps, legacy PyTorch files, and pickles nested in others."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlwarden.artifacts.sniff import Format
from mlwarden.scan.static.base import Handler
from mlwarden.scan.static.pickle.analyzer import PickleAnalyzer

if TYPE_CHECKING:
    from mlwarden.artifacts.artifact import Artifact
    from mlwarden.scan.context import ScanContext


class PickleHandler(Handler):
    """Emulates every pickle in the stream (consecutive pickles, legacy torch, joblib arrays)."""

    formats = (Format.PICKLE,)

    def scan(self, artifact: Artifact, ctx: ScanContext) -> None:
        """Analyse ``artifact`` as a pickle stream starting at byte 0."""
        scan_pickle_stream(artifact, ctx, 0)


def scan_pickle_stream(artifact: Artifact, ctx: ScanContext, offset: int) -> None:
    """Analyse the pickles of ``artifact`` starting at ``offset`` (e.g. after a .npy header).

    Findings gathered before a limit or error stops the analysis are still reported: a payload at the
    front of a corrupt stream runs before the loader fails, so it must never be lost.
    """
    analyzer = PickleAnalyzer(artifact, ctx)
    try:
        with artifact.open() as stream:
            if offset:
                stream.seek(offset)
            analyzer.run_stream(stream)
    finally:
        for finding in analyzer.findings():
            ctx.report(finding)
