"""The checks the guard runs on each request and response, each returning its evidence.

:class:`RequestGuard` is built once per served version (from the policy, the servable and the baseline
captured at approval) and is then called per request: :meth:`~RequestGuard.check_input` before the model
runs, :meth:`~RequestGuard.check_client` with the model's predicted classes (PRADA needs them), and
:meth:`~RequestGuard.filter_output` on what goes back. No HTTP here: the service turns the verdict into a
status code, an audit event and metrics.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from mlwarden.core.errors import MlwardenError, UsageError
from mlwarden.guard.adversarial import CombinedDetector
from mlwarden.guard.extraction import ExtractionMonitor
from mlwarden.guard.prompt_screen import PromptScreen, load_screen
from mlwarden.guard.redact import limit_scores, redact_json
from mlwarden.serve.calibration import GuardBaseline, build_detector
from mlwarden.serve.fastcheck import FusedSqueezeNoise, fuse
from mlwarden.serve.policy import GuardPolicy
from mlwarden.serve.servable import Prediction, Servable
from mlwarden.serve.state import LocalState, StateBackend

Outcome = Literal["pass", "flag", "block", "throttle"]
Decision = Literal["allowed", "flagged", "blocked", "throttled"]

_RANK = {"pass": 0, "flag": 1, "throttle": 2, "block": 3}
_DECISION: dict[str, Decision] = {"pass": "allowed", "flag": "flagged", "throttle": "throttled", "block": "blocked"}
#: Rows whose evidence is listed in one check result (the count is always complete).
MAX_ROWS_IN_EVIDENCE = 8
#: Output strings remembered as free of PII per served version (field names and class labels; see
#: :meth:`RequestGuard._strings_to_scan`).
MAX_CLEAN_STRINGS = 10_000


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check's outcome on one request, with the evidence behind it.

    Attributes:
        check: ``range``, ``ood``, ``adversarial``, ``prompt``, ``extraction``, ``output_pii``, ``output_scores``.
        outcome: ``pass``, ``flag`` (served, recorded), ``throttle`` (429) or ``block`` (403).
        detail: one line saying why.
        evidence: JSON-able figures (scores, thresholds, features, rows).
    """

    check: str
    outcome: Outcome
    detail: str
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for the audit log."""
        return {"check": self.check, "outcome": self.outcome, "detail": self.detail, "evidence": dict(self.evidence)}


def decide(results: Sequence[CheckResult]) -> Decision:
    """The request's decision: the most severe outcome of its checks."""
    worst = max((r.outcome for r in results), key=_RANK.__getitem__, default="pass")
    return _DECISION[worst]


def _act(action: str, hit: bool) -> Outcome:
    if not hit or action == "off":
        return "pass"
    return "block" if action == "block" else "flag"


class RequestGuard:
    """The per-version checks (see the module docstring).

    Args:
        policy: the guard policy.
        servable: the loaded model.
        baseline: the baseline captured at approval (``None`` only if the policy allows serving without one).
    """

    def __init__(self, policy: GuardPolicy, servable: Servable, baseline: GuardBaseline | None) -> None:
        self.policy = policy
        self.servable = servable
        self.baseline = baseline
        self.redaction = policy.output.redaction()
        self.limits = policy.output.limits()
        self._clean: set[str] = set()
        self._lo: np.ndarray | None = None
        self._hi: np.ndarray | None = None
        self._names: tuple[str, ...] = ()
        profile = baseline.baseline if baseline is not None else None
        if profile is not None and servable.input_kind == "tabular":
            numeric = [profile.feature(n) for n in profile.numeric_names]
            width = np.array([f.maximum - f.minimum for f in numeric])
            margin = policy.input.range_margin * np.where(width > 0, width, np.abs([f.mean for f in numeric]) + 1.0)
            self._lo = np.array([f.minimum for f in numeric]) - margin
            self._hi = np.array([f.maximum for f in numeric]) + margin
            self._names = tuple(profile.numeric_names)
        self.detector: CombinedDetector | None = None
        #: The same check as ``detector`` in one model call, when it is the default combination (fastcheck.py).
        self.fused: FusedSqueezeNoise | None = None
        if baseline is not None and baseline.adversarial_thresholds and policy.adversarial.action != "off":
            self.detector = build_detector(
                servable, baseline.adversarial, baseline.adversarial_thresholds, baseline.value_range
            )
            fns = servable.proba_fns()
            if self.detector is not None and fns is not None:
                self.fused = fuse(self.detector, *fns, seed=baseline.adversarial.seed)
        self.screen: PromptScreen | None = None
        if servable.input_kind == "text" and policy.prompt.action != "off":
            self.screen = load_screen(policy.prompt.screen, **policy.prompt.options)
        self.extraction: ExtractionMonitor | None = None
        self._local_state = LocalState(1.0, 1)  # only its lock is used: extraction statistics in this process
        if policy.extraction.action != "off" and servable.input_kind == "tabular" and servable.classes:
            config = policy.extraction.extraction_config()
            if "delta" not in policy.extraction.config and baseline is not None and baseline.extraction_delta:
                config = dataclasses.replace(config, delta=baseline.extraction_delta)  # calibrated at approval
            self.extraction = ExtractionMonitor(config, n_classes=len(servable.classes))

    # -- before the model --------------------------------------------------------------------------------------

    def check_input(self, rows: np.ndarray | list[str]) -> list[CheckResult]:
        """Checks that need only the input: ranges, OOD score, adversarial detectors, prompt screen."""
        if isinstance(rows, list):
            return [self._prompt(rows)] if self.screen is not None else []
        results = []
        if self._lo is not None and self._hi is not None and self.policy.input.range_action != "off":
            results.append(self._range(rows))
        if self.baseline is not None and self.policy.input.ood_action != "off":
            ood = self._ood(rows)
            if ood is not None:
                results.append(ood)
        if self.detector is not None:
            results.append(self._adversarial(rows))
        return results

    def _range(self, rows: np.ndarray) -> CheckResult:
        if not (self._lo is not None):
            raise RuntimeError("internal invariant broken: self._lo is not None")
        if not (self._hi is not None):
            raise RuntimeError("internal invariant broken: self._hi is not None")
        outside = (rows < self._lo) | (rows > self._hi)
        bad_rows = np.flatnonzero(outside.any(axis=1))
        if not bad_rows.size:
            return CheckResult("range", "pass", "every value within the baseline range")
        examples = []
        for r in bad_rows[:MAX_ROWS_IN_EVIDENCE]:
            j = int(np.flatnonzero(outside[r])[0])
            name = self._names[j] if j < len(self._names) else f"x{j}"
            examples.append(
                {"row": int(r), "feature": name, "value": float(rows[r, j]), "range": [self._lo[j], self._hi[j]]}
            )
        first = examples[0]
        detail = f"{len(bad_rows)} row(s) outside the baseline range, e.g. {first['feature']}={first['value']:.4g}"
        evidence = {"rows": int(bad_rows.size), "examples": examples, "margin": self.policy.input.range_margin}
        return CheckResult("range", _act(self.policy.input.range_action, True), detail, evidence)

    def _ood(self, rows: np.ndarray) -> CheckResult | None:
        if not (self.baseline is not None):
            raise RuntimeError("internal invariant broken: self.baseline is not None")
        profile, threshold = self.baseline.baseline, self.baseline.ood_threshold
        if profile is None or threshold is None:
            return None
        distances = profile.mahalanobis(rows)
        worst = float(distances.max())
        over = np.flatnonzero(distances > threshold)
        evidence = {
            "score": round(worst, 4),
            "threshold": round(threshold, 4),
            "quantile": self.baseline.ood_quantile,
            "rows": [int(i) for i in over[:MAX_ROWS_IN_EVIDENCE]],
        }
        if not over.size:
            return CheckResult("ood", "pass", f"Mahalanobis distance {worst:.3g} <= {threshold:.3g}", evidence)
        detail = f"{over.size} row(s) out of distribution: Mahalanobis distance {worst:.3g} > {threshold:.3g}"
        return CheckResult("ood", _act(self.policy.input.ood_action, True), detail, evidence)

    def _adversarial(self, rows: np.ndarray) -> CheckResult:
        if not (self.detector is not None):
            raise RuntimeError("internal invariant broken: self.detector is not None")
        scores = self.fused.check(rows) if self.fused is not None else self.detector.check(rows)
        flagged = [(i, s) for i, s in enumerate(scores) if s.flagged]
        top = max(scores, key=lambda s: s.score / s.threshold if s.threshold > 0 else s.score)
        evidence: dict[str, Any] = {
            "score": round(top.score, 4),
            "threshold": round(top.threshold, 4),
            "detail": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in top.detail.items()},
            "rows": [i for i, _ in flagged[:MAX_ROWS_IN_EVIDENCE]],
        }
        if not flagged:
            return CheckResult("adversarial", "pass", "no detector above its calibrated threshold", evidence)
        worst = str(top.detail.get("worst", top.detector))
        detail = f"{len(flagged)} row(s) flagged as adversarial (strongest signal: {worst})"
        return CheckResult("adversarial", _act(self.policy.adversarial.action, True), detail, evidence)

    def _prompt(self, texts: list[str]) -> CheckResult:
        if not (self.screen is not None):
            raise RuntimeError("internal invariant broken: self.screen is not None")
        worst = None
        hits = []
        for i, text in enumerate(texts):
            try:
                result = self.screen.screen(text)
            except MlwardenError as exc:  # e.g. a text beyond the screen's limit: fail closed
                return CheckResult("prompt", "block", f"text {i} could not be screened: {exc}", {"row": i})
            if worst is None or result.score > worst.score:
                worst = result
            if result.flagged:
                hits.append(i)
        if not (worst is not None):
            raise RuntimeError("internal invariant broken: worst is not None")
        evidence = {
            "screen": worst.screen,
            "score": round(worst.score, 4),
            "threshold": worst.threshold,
            "reasons": [getattr(r, "rule", str(r)) for r in worst.reasons][:10],
            "rows": hits[:MAX_ROWS_IN_EVIDENCE],
        }
        if not hits:
            return CheckResult("prompt", "pass", f"screen score {worst.score:.2f} below {worst.threshold}", evidence)
        detail = f"{len(hits)} text(s) look like prompt injection or a jailbreak (score {worst.score:.2f})"
        return CheckResult("prompt", _act(self.policy.prompt.action, True), detail, evidence)

    # -- with the model's answer --------------------------------------------------------------------------------

    def check_client(
        self,
        client: str,
        rows: np.ndarray,
        prediction: Prediction,
        now: float,
        state: StateBackend | None = None,
        scope: str = "",
    ) -> CheckResult | None:
        """Per-client extraction detection (PRADA distances, query rate, coverage); ``None`` when not applicable.

        ``state`` keeps the client's statistics (shared between workers when it is Redis; ``scope`` names the
        served version there); without it they stay in this guard.

        Raises:
            StateUnavailableError: the shared state did not answer (the request fails closed).
        """
        if self.extraction is None or prediction.scores is None:
            return None
        classes = np.asarray(prediction.scores).argmax(axis=1).tolist()
        if state is None:
            state = self._local_state
        verdict = state.observe(self.extraction, scope, client, rows, classes, now)
        evidence = {
            "prada_w": None if verdict.prada_w is None else round(verdict.prada_w, 4),
            "delta": self.extraction.config.delta,
            "rate_per_s": round(verdict.rate, 3),
            "queries": verdict.queries,
            "reasons": list(verdict.reasons),
        }
        if verdict.action == "allow":
            return CheckResult("extraction", "pass", "query pattern of a normal client", evidence)
        detail = f"{verdict.action}: " + "; ".join(verdict.reasons)
        outcome: Outcome = "flag" if self.policy.extraction.action == "flag" else verdict.action
        return CheckResult("extraction", outcome, detail, evidence)

    # -- on the way out -----------------------------------------------------------------------------------------

    def _strings_to_scan(self, value: Any) -> set[str] | None:
        """Every string :func:`redact_json` would scan in ``value`` (keys, texts, long integers as text).

        ``None`` when ``value`` is not plainly within the redaction limits or holds a type :func:`redact_json`
        refuses: then it runs and decides. A classifier's answer is made of a few strings (field names, class
        labels) that repeat on every request; once a walk over them found nothing, the same strings are known
        clean (PII detection is a function of the string and the configuration, both fixed here), so the
        regular expressions are not run over them again (:data:`MAX_CLEAN_STRINGS` remembered).
        """
        config = self.redaction
        found: set[str] = set()
        nodes = chars = 0
        stack: list[tuple[Any, int]] = [(value, 0)]
        while stack:
            item, depth = stack.pop()
            nodes += 1
            if depth * 2 > config.max_depth or nodes * 2 > config.max_nodes or chars * 2 > config.max_total_chars:
                return None
            if isinstance(item, str):
                found.add(item)
                chars += len(item)
            elif isinstance(item, bool) or item is None or isinstance(item, float):
                continue
            elif isinstance(item, int):
                if config.scan_integers and abs(item) >= 100_000_000:
                    return None
            elif isinstance(item, dict):
                for key, child in item.items():
                    if isinstance(key, str) and config.mask_keys:
                        found.add(key)
                        chars += len(key)
                    stack.append((child, depth + 1))
            elif isinstance(item, list):
                stack.extend((child, depth + 1) for child in item)
            else:
                return None
        return found if chars * 2 <= config.max_total_chars else None

    def filter_output(self, prediction: Prediction) -> tuple[list[dict[str, Any]], list[CheckResult]]:
        """The response rows after leakage reduction and PII masking, with what was changed.

        Raises:
            UsageError: the model produced non-finite scores (refused rather than served).
        """
        rows: list[dict[str, Any]] = []
        results: list[CheckResult] = []
        rounded = dropped = 0
        if prediction.scores is not None:
            classes = prediction.classes or tuple(range(np.asarray(prediction.scores).shape[1]))
            keys = [str(c) for c in classes]
            for label, scores in zip(prediction.labels, np.asarray(prediction.scores), strict=True):
                reduced = limit_scores(dict(zip(keys, scores.tolist(), strict=True)), self.limits)
                rounded += reduced.rounded
                dropped += reduced.dropped
                rows.append({"label": _json_scalar(label), "scores": reduced.value})
            if rounded or dropped:
                results.append(
                    CheckResult(
                        "output_scores",
                        "pass",
                        f"scores reduced: {rounded} rounded, {dropped} dropped",
                        {"decimals": self.limits.decimals, "top_k": self.limits.top_k},
                    )
                )
        else:
            rows = [{"value": _json_scalar(v)} for v in prediction.labels]
        if self.policy.output.pii_action == "off":
            return rows, results
        strings = self._strings_to_scan(rows)
        if strings is not None and strings <= self._clean:
            return rows, results  # exactly what redact_json would find: nothing (see _strings_to_scan)
        redacted = redact_json(rows, self.redaction)
        if not redacted.changed:
            if strings is not None:
                if len(self._clean) + len(strings) > MAX_CLEAN_STRINGS:
                    self._clean = set()
                self._clean |= strings
            return rows, results
        found = sorted({m.detector for _, matches in redacted.redactions for m in matches})
        pointers = [p for p, _ in redacted.redactions][:MAX_ROWS_IN_EVIDENCE]
        outcome: Outcome = "block" if self.policy.output.pii_action == "block" else "flag"
        verb = "withheld" if outcome == "block" else "masked"
        detail = f"PII or secrets in the output ({', '.join(found)}) {verb}"
        results.append(CheckResult("output_pii", outcome, detail, {"detectors": found, "pointers": pointers}))
        return redacted.value, results


def _json_scalar(value: Any) -> Any:
    """A model output value as JSON: numpy scalars unwrapped, non-finite floats refused."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError("the model produced a non-finite output; refusing to serve it")
    return value
