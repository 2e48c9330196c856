"""Personal data through Microsoft Presidio, an optional engine (``pip install 'mlwarden[presidio]'``).

The built-in scan (:mod:`mlwarden.datacheck.pii_scan`) stays the default: it is the guard's detectors, so a
dataset and a model's outputs are judged by the same rules, and it runs at tens of MB/s. Presidio brings other
recognizers (URLs, crypto wallets, national numbers of many countries, …) and, with a spaCy model installed,
named entities (``PERSON``, ``LOCATION``, …) — at a fraction of the speed, since every distinct cell goes through
every recognizer in Python.

Without ``spacy_model``, the analyzer runs on an NLP engine that returns empty artifacts (no tokens, no NER), so
only Presidio's pattern and checksum recognizers run (e-mail, Luhn-checked cards, mod-97 IBANs, ``phonenumbers``
for phones, IP addresses, US SSNs, …): no model download, nothing to install beyond PyPI. With ``spacy_model``
(an installed spaCy package or a pipeline folder) Presidio's own spaCy engine also reports its named entities.
Presidio would download a missing model; this module refuses instead. Its e-mail recognizer checks the domain
with ``tldextract``, which by default fetches the public-suffix list from the internet; here it uses the list
bundled with ``tldextract``, so a scan never touches the network.

Results are :class:`mlwarden.guard.pii.Match` values and go through :class:`PiiScan`'s tallies, so the metrics
have the same keys. The entity types the built-in detectors also know are reported under the detectors' names
(:data:`ENTITY_NAMES`) and masked by the detectors' own maskers; the others keep Presidio's name (``URL``,
``PERSON``, …) and are masked by :func:`mlwarden.guard.pii.mask_keep`. A report never holds a raw value.
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlwarden.datacheck.model import DataCheckError
from mlwarden.datacheck.pii_scan import PiiScan
from mlwarden.guard.pii import DETECTORS, Match, mask_keep

#: Presidio entity type → the built-in detector of the same kind (``IP_ADDRESS`` splits into ``ipv4``/``ipv6``).
ENTITY_NAMES = {
    "EMAIL_ADDRESS": "email",
    "CREDIT_CARD": "credit_card",
    "IBAN_CODE": "iban",
    "PHONE_NUMBER": "phone",
    "US_SSN": "us_ssn",
    "IP_ADDRESS": "ipv4",
}
#: Results scoring below this are dropped. Presidio's default is 0, which keeps its weakest guesses (a bare
#: six-digit number as a US driver's licence scores 0.01); its phone recognizer scores 0.4.
SCORE_THRESHOLD = 0.4
#: Characters kept at the end by :func:`mask_keep` for the types without a detector of their own.
_KEEP_END = {"credit_card": 4}
INSTALL_HINT = "pip install 'mlwarden[presidio]'"


def _import_presidio() -> Any:
    try:
        import presidio_analyzer
    except ImportError as exc:
        raise DataCheckError(f"--pii-engine presidio needs Presidio, which is not installed: {INSTALL_HINT}") from exc
    return presidio_analyzer


def _no_nlp_engine() -> Any:
    """An NLP engine returning empty artifacts: Presidio's ``NoOpNlpEngine``, or a minimal one on older versions."""
    from presidio_analyzer import nlp_engine

    if hasattr(nlp_engine, "NoOpNlpEngine"):
        engine = nlp_engine.NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
        engine.load()
        return engine
    return _minimal_engine_class()()


def _minimal_engine_class() -> type:
    from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngine
    from spacy.tokens import Doc
    from spacy.vocab import Vocab

    class MinimalNlpEngine(NlpEngine):
        """No tokens, no lemmas, no entities: only the pattern recognizers find anything."""

        def __init__(self) -> None:
            self.vocab = Vocab()

        def load(self) -> None:
            """Nothing to load."""

        def is_loaded(self) -> bool:
            return True

        def process_text(self, text: str, language: str) -> Any:
            return NlpArtifacts([], Doc(self.vocab, words=[]), [], [], self, language)

        def process_batch(self, texts: Any, language: str, batch_size: int = 1, n_process: int = 1, **kw: Any) -> Any:
            return ((str(t), self.process_text(str(t), language)) for t in texts)

        def is_stopword(self, word: str, language: str) -> bool:
            return False

        def is_punct(self, word: str, language: str) -> bool:
            return False

        def get_supported_entities(self) -> list[str]:
            return []

        def get_supported_languages(self) -> list[str]:
            return ["en"]

    return MinimalNlpEngine


def _spacy_engine(model: str) -> Any:
    import spacy
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    if not (spacy.util.is_package(model) or Path(model).is_dir()):
        raise DataCheckError(
            f"--presidio-spacy-model: spaCy model {model!r} is not installed (install it with "
            f"`python -m spacy download {model}`, or give a pipeline folder, or omit the option)"
        )
    config = {"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": model}]}
    try:
        return NlpEngineProvider(nlp_configuration=config).create_engine()
    except (OSError, ValueError) as exc:
        raise DataCheckError(f"--presidio-spacy-model: cannot load {model!r}: {exc}") from None


def _offline_email_recognizer() -> Any:
    """Presidio's e-mail recognizer, checking domains against ``tldextract``'s bundled suffix list (no network)."""
    import tldextract
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return bool(extract(pattern_text).fqdn)

    return OfflineEmailRecognizer()


def build_analyzer(spacy_model: str | None = None) -> Any:
    """A Presidio ``AnalyzerEngine`` for English: pattern recognizers only, or with ``spacy_model``'s entities.

    Raises:
        DataCheckError: Presidio is not installed, or ``spacy_model`` is not installed or cannot be loaded.
    """
    presidio = _import_presidio()
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    nlp = _spacy_engine(spacy_model) if spacy_model else _no_nlp_engine()
    analyzer = presidio.AnalyzerEngine(nlp_engine=nlp, supported_languages=["en"])
    registry = analyzer.registry
    if any(r.name == "EmailRecognizer" for r in registry.recognizers):
        registry.remove_recognizer("EmailRecognizer")
        registry.add_recognizer(_offline_email_recognizer())
    return analyzer


def drop_contained(results: Sequence[Any]) -> list[Any]:
    """Drop a result lying inside another that scores higher, or the same on a longer span (a URL in an e-mail)."""
    kept = []
    for r in results:
        inside = any(
            o is not r
            and o.start <= r.start
            and r.end <= o.end
            and (o.score > r.score or (o.score == r.score and o.end - o.start > r.end - r.start))
            for o in results
        )
        if not inside:
            kept.append(r)
    return kept


def _name(entity: str, value: str) -> str:
    name = ENTITY_NAMES.get(entity, entity)
    return "ipv6" if name == "ipv4" and ":" in value else name


def _mask(name: str, value: str) -> str:
    masker = getattr(DETECTORS.get(name), "mask", None)
    return str(masker(value)) if masker is not None else mask_keep(value, keep_end=_KEEP_END.get(name, 0))


class PresidioScan(PiiScan):
    """:class:`PiiScan`'s tallies and metrics, with Presidio's analyzer finding the matches."""

    def __init__(
        self,
        columns: Sequence[str],
        *,
        spacy_model: str | None = None,
        score_threshold: float = SCORE_THRESHOLD,
        examples: int = 3,
        max_rows_listed: int = 20,
    ) -> None:
        super().__init__(columns, examples=examples, max_rows_listed=max_rows_listed)
        started = time.perf_counter()
        self.analyzer = build_analyzer(spacy_model)
        self.build_seconds = time.perf_counter() - started
        self.spacy_model = spacy_model
        self.score_threshold = score_threshold

    def find(self, text: str) -> list[Match]:
        """Presidio's results in one cell, as masked matches (contained lower-scoring results dropped)."""
        results = self.analyzer.analyze(text, language="en", score_threshold=self.score_threshold)
        matches = []
        for r in sorted(drop_contained(results), key=lambda r: (r.start, r.end)):
            value = text[r.start : r.end]
            name = _name(r.entity_type, value)
            matches.append(Match(name, r.start, r.end, float(r.score), _mask(name, value)))
        return matches

    def add(self, frame: pd.DataFrame) -> None:
        """Scan one normalised chunk: each distinct value of a column once."""
        self.rows += len(frame)
        for column in self.columns:
            codes, uniques = pd.factorize(frame[column], sort=False)
            repeats = np.bincount(codes[codes >= 0], minlength=len(uniques))
            found = {}
            for i, value in enumerate(uniques):
                text = str(value)
                self.bytes += len(text.encode("utf-8", "surrogatepass")) * int(repeats[i])
                matches = self.find(text)
                if matches:
                    found[i] = matches
            if found:
                self._tally(self.tally[column], found, codes, repeats, frame.index)

    def recognizers(self) -> list[str]:
        """Names of the recognizers that ran (English)."""
        return sorted({r.name for r in self.analyzer.registry.get_recognizers(language="en", all_fields=True)})

    def parameters(self) -> dict[str, Any]:
        """The pii check's parameters: engine, NLP model, score threshold, recognizers."""
        return {
            "engine": "presidio",
            "presidio_version": importlib.metadata.version("presidio-analyzer"),
            "nlp": f"spacy:{self.spacy_model}" if self.spacy_model else "none (pattern recognizers only)",
            "score_threshold": self.score_threshold,
            "recognizers": self.recognizers(),
            "entity_names": dict(ENTITY_NAMES),
        }

    def metrics(self) -> dict[str, Any]:
        """:meth:`PiiScan.metrics`, with ``engine`` naming Presidio."""
        metrics = super().metrics()
        metrics["engine"] = f"presidio-analyzer {importlib.metadata.version('presidio-analyzer')}"
        metrics["analyzer_build_seconds"] = self.build_seconds  # not in the scan's time or MB/s
        return metrics
