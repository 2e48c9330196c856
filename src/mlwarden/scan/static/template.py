"""Jinja chat templates: server-side template injection (SSTI) found by parsing, never rendering.

Chat templates travel inside model files (GGUF ``tokenizer.chat_template``, ``tokenizer_config.json``)
and are rendered by loaders such as llama-cpp-python (CVE-2024-34359) or litellm (CVE-2024-2952) —
sometimes in a non-sandboxed Jinja environment, where ``{{ cycler.__init__.__globals__.os.popen(..) }}``
runs a shell command. Rendering a template to find out is exactly the attack, so the template is only
*parsed* by Jinja's own parser and its syntax tree is walked.

The walk looks for what no benign chat template needs: dunder or private attribute names (directly,
through ``|attr``, ``map(attribute=...)`` or subscripts — Jinja's ``getitem`` falls back to
``getattr``), names built at render time from fragments (``'__cla' ~ 'ss__'``, ``'%c'|format(95)``,
``dict(__class__=1)|join``), calls to process/file/import functions, ``str.format`` fields that
traverse attributes, web-framework globals (``request``, ``config``), subscript keys the template builds
at render time (``x[a ~ 'init' ~ b]``, a ``{% set %}`` variable holding such a string) and calls through
subscripts (``x[k]()``). Benign templates loop, index data by data (``message[key]``),
branch, call ``raise_exception``, use ``namespace()`` for loop state and ``tojson`` — none of which is
flagged.

This module is the entry point (handler, :func:`analyse_template`, :func:`read_text`, parsing and
reporting); the rule declarations and name tables are in :mod:`~mlwarden.scan.static.template_rules`
and the folding walk in :mod:`~mlwarden.scan.static.template_walk`. The rules are re-exported here.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import TYPE_CHECKING

from jinja2 import Environment, TemplateSyntaxError, nodes
from jinja2.ext import Extension
from jinja2.parser import Parser

from mlwarden.artifacts.sniff import Format
from mlwarden.core.errors import LimitExceeded
from mlwarden.scan.context import INCOMPLETE
from mlwarden.scan.static.base import Handler
from mlwarden.scan.static.template_rules import (
    COMPUTED_LOOKUP,
    SSTI_DANGEROUS,
    SSTI_INTERNALS,
    SSTI_SUSPICIOUS,
    UNPARSEABLE,
    UNPARSEABLE_TOKENS,
    UNUSUAL_CALL,
)
from mlwarden.scan.static.template_walk import Hit, TemplateAnalyser

if TYPE_CHECKING:
    from mlwarden.artifacts.artifact import Artifact
    from mlwarden.scan.context import ScanContext

__all__ = [
    "COMPUTED_LOOKUP",
    "SSTI_DANGEROUS",
    "SSTI_INTERNALS",
    "SSTI_SUSPICIOUS",
    "UNPARSEABLE",
    "UNPARSEABLE_TOKENS",
    "UNUSUAL_CALL",
    "TemplateHandler",
    "analyse_template",
    "read_text",
]

_TEXT_TOKENS = re.compile(r"__\w+__|\bpopen\b|\bsubprocess\b|\bimport_module\b|\bos\.system\b")
_MAX_HITS = 20


class _GenerationExtension(Extension):
    """Parse Hugging Face's ``{% generation %}...{% endgeneration %}`` block (used by benign templates)."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body).set_lineno(lineno)


def _environment() -> Environment:
    # Parsing only: the environment never renders, so its (unsandboxed) runtime is irrelevant. The
    # extensions are the ones real loaders enable (transformers: loopcontrols + generation).
    return Environment(extensions=["jinja2.ext.loopcontrols", "jinja2.ext.do", _GenerationExtension])  # noqa: S701


def _report(hits: list[Hit], artifact: Artifact, ctx: ScanContext, origin: str, offset: int | None) -> None:
    grouped: dict[str, list[Hit]] = defaultdict(list)
    for h in hits:
        if h not in grouped[h.rule.id]:
            grouped[h.rule.id].append(h)
    for group in grouped.values():
        r = group[0].rule
        reasons = [f"line {h.line}: {h.reason}" for h in group[:_MAX_HITS]]
        more = f" (+{len(group) - 5} more)" if len(group) > 5 else ""
        evidence = f"{origin}: " + "; ".join(reasons[:5]) + more
        ctx.report(
            r.finding(
                artifact.location(offset),
                evidence,
                template=origin,
                reasons=reasons,
                lines=sorted({h.line for h in group}),
            )
        )


def analyse_template(source: str, artifact: Artifact, ctx: ScanContext, origin: str, offset: int | None) -> None:
    """Parse ``source`` as a Jinja template (never render it) and report injection findings.

    Args:
        source: the template text.
        artifact: the artifact the template came from (findings are located in it).
        ctx: the scan context.
        origin: where in the artifact the template sits (a GGUF key, ``chat_template[tool_use]``...).
        offset: byte offset of the template in the artifact, when known.
    """
    if len(source) > ctx.limits.max_text_size:
        ctx.report(
            INCOMPLETE.finding(
                artifact.location(offset),
                f"{origin}: template of {len(source)} characters exceeds max_text_size {ctx.limits.max_text_size}",
                limit="max_text_size",
            )
        )
        return
    try:
        tree = _environment().parse(source)
    except TemplateSyntaxError as exc:
        ctx.report(
            UNPARSEABLE.finding(
                artifact.location(offset), f"{origin}: line {exc.lineno}: {exc.message}", template=origin
            )
        )
        tokens = sorted(set(_TEXT_TOKENS.findall(source)))
        if tokens:
            ctx.report(
                UNPARSEABLE_TOKENS.finding(
                    artifact.location(offset),
                    f"{origin}: raw text contains " + ", ".join(tokens[:10]),
                    template=origin,
                    tokens=tokens[:20],
                )
            )
        return
    except RecursionError:
        ctx.report(
            INCOMPLETE.finding(
                artifact.location(offset), f"{origin}: template nested too deeply to parse", limit="recursion"
            )
        )
        return
    analyser = TemplateAnalyser(ctx)
    try:
        analyser.walk(tree)
    except RecursionError:
        ctx.report(
            INCOMPLETE.finding(
                artifact.location(offset), f"{origin}: template nested too deeply to analyse", limit="recursion"
            )
        )
    _report(analyser.hits, artifact, ctx, origin, offset)


def read_text(artifact: Artifact, ctx: ScanContext) -> str:
    """Read a whole text artifact, bounded by ``max_text_size`` (shared with the HF JSON handlers).

    Raises:
        LimitExceeded: the artifact is larger than ``max_text_size``.
    """
    limit = ctx.limits.max_text_size
    if artifact.size is not None and artifact.size > limit:
        raise LimitExceeded("max_text_size", f"{artifact.size} bytes > {limit}")
    with artifact.open() as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise LimitExceeded("max_text_size", f"more than {limit} bytes")
    return data.decode("utf-8", errors="replace").lstrip("\ufeff")


class TemplateHandler(Handler):
    """A standalone Jinja template file (``chat_template.jinja``, ``*.jinja``)."""

    formats = (Format.TEMPLATE,)

    def scan(self, artifact: Artifact, ctx: ScanContext) -> None:
        """Parse the whole file as a template and report injection findings."""
        analyse_template(read_text(artifact, ctx), artifact, ctx, artifact.name, None)
