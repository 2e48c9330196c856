"""Hugging Face JSON beside a model: chat templates (tokenizer_config.json), custom code (config.json).

Neither file is code, but both steer code: ``chat_template`` is a Jinja template a loader renders
(litellm CVE-2024-2952 rendered it unsandboxed), and ``auto_map`` names Python modules that
``transformers`` imports and runs when a user passes ``trust_remote_code=True`` — from this folder, or
from *another* repository with the ``"repo--module.Class"`` form. Templates go to the shared template
analysis; code references are reported with the module they name and whether its file is shipped here (in the
folder on disk, or in the listing of the remote repository or prefix the file was read from).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from mlwarden.artifacts.folder import file_folder
from mlwarden.artifacts.sniff import Format
from mlwarden.core.findings import Confidence, Severity, rule
from mlwarden.scan.static.base import Handler
from mlwarden.scan.static.template import analyse_template, read_text

if TYPE_CHECKING:
    from mlwarden.artifacts.artifact import Artifact
    from mlwarden.scan.context import ScanContext

REMOTE_CODE = rule(
    "MLW-HF-001",
    "Custom code executes with trust_remote_code",
    Severity.LOW,
    cwe=94,
    description="auto_map (or custom_pipelines) names Python classes that transformers downloads, imports "
    "and runs when the model is loaded with trust_remote_code=True. The code is not a model weight: it runs "
    "with the loading user's rights, and only when the loading program opts in (transformers refuses "
    "otherwise); the module shipped beside the model is scanned as source. Low for a module of the model's own "
    "repository; medium when the reference pulls code from another repository ('repo--module.Class', which "
    "can change after review) or names a module that is not a plain Python name.",
    remediation="Review the referenced module (scan it too: mlwarden scans .py files beside the model), pin "
    "the revision, or load without trust_remote_code.",
    confidence=Confidence.HIGH,
)
MALFORMED = rule(
    "MLW-HF-002",
    "Malformed Hugging Face JSON",
    Severity.LOW,
    cwe=20,
    description="The file is not a JSON object. transformers fails to load it (nothing runs), but it could "
    "not be analysed.",
    remediation="Replace the file with a valid one from the model's source.",
)
BAD_TEMPLATE_FIELD = rule(
    "MLW-HF-003",
    "Unexpected chat_template structure",
    Severity.LOW,
    cwe=20,
    description="chat_template is neither a string nor a list of {name, template} objects; transformers "
    "rejects or ignores it.",
    remediation="Replace the file with a valid one from the model's source.",
)

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _load_json(artifact: Artifact, ctx: ScanContext) -> dict[str, Any] | None:
    text = read_text(artifact, ctx)
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        ctx.report(MALFORMED.finding(artifact.location(), f"not valid JSON: {str(exc)[:200]}"))
        return None
    if not isinstance(obj, dict):
        ctx.report(MALFORMED.finding(artifact.location(), f"top level is a JSON {type(obj).__name__}"))
        return None
    return obj


def _references(value: Any) -> list[str]:
    """Class references in an auto_map value: a string, or a list like ``["tok.Slow", "tok.Fast"]``."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _describe(reference: str, artifact: Artifact) -> tuple[str, dict[str, Any]]:
    folder = file_folder(artifact)  # on disk, or the listing of a remote prefix / repository
    repo, _, local = reference.rpartition("--")
    module, _, cls = local.rpartition(".")
    facts: dict[str, Any] = {"reference": reference, "module": module or local, "class": cls}
    text = f"{reference!r} runs module {module or local!r}"
    if repo:
        facts["repository"] = repo
        text += f" fetched from another repository {repo!r}"
    elif folder is not None and module:
        present = folder.is_file(f"{module.replace('.', '/')}.py")
        facts["file_present"] = present
        url = artifact.chain[0].split("?", 1)[0]  # a remote file's display URL (its query is redacted)
        name = artifact.fs_path.name if artifact.fs_path is not None else url.rsplit("/", 1)[-1]
        text += f" ({module}.py {'present' if present else 'NOT present'} beside {name})"
    if module and not all(_IDENTIFIER.match(p) for p in module.split(".")):
        facts["suspicious_module_name"] = True
        text += " [module name is not a Python identifier]"
    return text, facts


def report_auto_map(obj: dict[str, Any], artifact: Artifact, ctx: ScanContext) -> None:
    """Report every custom-code reference in ``auto_map`` and ``custom_pipelines``."""
    refs: list[tuple[str, str]] = []
    auto_map = obj.get("auto_map")
    if isinstance(auto_map, dict):
        for auto_class, value in auto_map.items():
            refs.extend((f"auto_map.{auto_class}", r) for r in _references(value))
    pipelines = obj.get("custom_pipelines")
    if isinstance(pipelines, dict):
        for task, spec in pipelines.items():
            impl = spec.get("impl") if isinstance(spec, dict) else None
            if isinstance(impl, str):
                refs.append((f"custom_pipelines.{task}", impl))
    for where, reference in refs:
        text, facts = _describe(reference, artifact)
        elsewhere = bool(facts.get("repository")) or bool(facts.get("suspicious_module_name"))
        severity = Severity.MEDIUM if elsewhere else None
        ctx.report(REMOTE_CODE.finding(artifact.location(), f"{where}: {text}", severity=severity, key=where, **facts))


class HfTokenizerConfigHandler(Handler):
    """``tokenizer_config.json`` (and ``chat_template.json``): analyse every chat template."""

    formats = (Format.HF_TOKENIZER_CONFIG,)

    def scan(self, artifact: Artifact, ctx: ScanContext) -> None:
        """Analyse ``chat_template`` (a string or a list of named templates) and ``auto_map``."""
        obj = _load_json(artifact, ctx)
        if obj is None:
            return
        report_auto_map(obj, artifact, ctx)
        templates = obj.get("chat_template")
        if templates is None:
            return
        if isinstance(templates, str):
            analyse_template(templates, artifact, ctx, "chat_template", None)
            return
        if not isinstance(templates, list):
            ctx.report(
                BAD_TEMPLATE_FIELD.finding(artifact.location(), f"chat_template is a {type(templates).__name__}")
            )
            return
        for index, entry in enumerate(templates):
            if isinstance(entry, dict) and isinstance(entry.get("template"), str):
                name = entry.get("name", index)
                analyse_template(entry["template"], artifact, ctx, f"chat_template[{name}]", None)
            else:
                ctx.report(
                    BAD_TEMPLATE_FIELD.finding(
                        artifact.location(), f"chat_template[{index}] is not a {{name, template}} object"
                    )
                )


class HfConfigHandler(Handler):
    """``config.json``: custom code referenced through ``auto_map`` / ``custom_pipelines``."""

    formats = (Format.HF_CONFIG,)

    def scan(self, artifact: Artifact, ctx: ScanContext) -> None:
        """Report custom-code references; a plain architecture config produces no finding."""
        obj = _load_json(artifact, ctx)
        if obj is not None:
            report_auto_map(obj, artifact, ctx)
