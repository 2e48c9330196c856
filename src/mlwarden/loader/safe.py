"""``mlwarden.load``: copy, analyse, and only then load — the enforcing safe loader.

The order is the guarantee:

1. the bytes are copied once into a private directory and hashed (:mod:`mlwarden.loader.private`);
2. the copy is analysed — statically, and in the sandbox when ``dynamic`` — and any finding at or above
   ``policy.fail_on`` raises :class:`UnsafeModelError` before any loader is imported;
3. the copy (never the source) is loaded, pickle-family formats through the restricted unpickler
   (:mod:`mlwarden.loader.restricted`), which refuses any global the allowlist does not admit even if the
   analysis missed it;
4. the copy is removed.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from mlwarden.artifacts.sniff import Format
from mlwarden.core.errors import LimitExceeded, UnsafeModelError, UsageError
from mlwarden.core.findings import Finding
from mlwarden.core.policy import Policy, load_policy
from mlwarden.loader.frameworks import LOADERS, PICKLE_FAMILY, load_with
from mlwarden.loader.private import CopiedFile, PrivateCopy, copy_model
from mlwarden.scan.remote import is_remote, redact
from mlwarden.scan.result import FileResult

ARCHIVE = "archive"
_BY_FORMAT = {
    Format.SAFETENSORS: "safetensors",
    Format.GGUF: "gguf",
    Format.XGBOOST_JSON: "xgboost",
    Format.XGBOOST_UBJ: "xgboost",
    Format.LIGHTGBM_TEXT: "lightgbm",
}


def _policy(policy: Policy | str | os.PathLike[str] | None) -> Policy:
    if isinstance(policy, Policy):
        return policy
    return load_policy(None if policy is None else Path(policy))


def _formats(result: FileResult) -> list[tuple[tuple[str, ...], Format]]:
    """A FileResult's layers as the (chain, Format) pairs the engine works with (unknown format names dropped)."""
    out = []
    for chain, value in result.formats:
        try:
            out.append((chain, Format(value)))
        except ValueError:
            continue
    return out


_COMPRESSED = frozenset({Format.GZIP, Format.BZIP2, Format.XZ, Format.LZMA, Format.ZSTD, Format.LZ4})


def detect_framework(path: Path, result: FileResult) -> str | None:
    """The framework that loads this file, judged from its content (``None``: not a loadable model)."""
    from mlwarden.scan.dynamic.engine import choose_framework

    formats = _formats(result)
    top = formats[0][1] if formats else None
    if top is Format.JOBLIB_ZF:
        return "joblib"  # joblib < 0.10's own zlib layer (a pickle, an .npy, or a companion's raw bytes)
    framework = choose_framework(path, formats)
    inner = formats[1][1] if len(formats) > 1 else None
    if framework is None and (top is Format.TAR or top is Format.ZIP or (top in _COMPRESSED and inner is Format.TAR)):
        return ARCHIVE  # a tar/zip of model files (an AllenNLP model.tar.gz): each member loaded on its own
    if framework == "jinja":  # the dynamic engine renders templates; a GGUF is loaded as weights here
        return "gguf" if top is Format.GGUF else None
    if framework is None and top is not None:
        return _BY_FORMAT.get(top)
    return framework


def _relocate(finding: Finding, display: str) -> Finding:
    """Show the user's path, not the private copy's, in a finding's location."""
    chain = finding.location.chain
    if not chain:
        return finding
    return dataclasses.replace(finding, location=dataclasses.replace(finding.location, chain=(display, *chain[1:])))


def _scan(file: CopiedFile, display: str, policy: Policy, dynamic: bool) -> FileResult:
    from mlwarden.scan.engine import scan_file

    modes = ("static", "dynamic") if dynamic else ("static",)
    result = scan_file(file.path, policy, modes)
    if result.error is not None:  # the private copy could not be read: fail closed
        raise UsageError(f"{display}: cannot analyse the private copy: {result.error}")
    return dataclasses.replace(result, path=display, findings=tuple(_relocate(f, display) for f in result.findings))


def _analyse(
    copy: PrivateCopy, source: Path, policy: Policy, framework: str | None, dynamic: bool, shown: str | None = None
) -> tuple[CopiedFile, str, list[Finding]]:
    """Scan every copied file; return the file to load, its framework and all findings (``shown``: a URL's name)."""
    findings: list[Finding] = []
    if not copy.is_folder:
        file = copy.files[0]
        display = shown or str(source)
        result = _scan(file, display, policy, dynamic)
        findings.extend(result.findings)
        chosen = framework or detect_framework(file.path, result)
        if chosen is None:
            _raise_if_unsafe(findings, policy, copy.digest, display)
            kinds = ", ".join(v for _, v in result.formats[:1]) or "unknown"
            raise UsageError(f"{display}: no loader for this content ({kinds}); pass framework=...")
        return file, chosen, findings
    candidates: list[tuple[CopiedFile, str, FileResult]] = []
    for file in copy.files:
        display = str(source / file.relpath)
        result = _scan(file, display, policy, dynamic=False)
        detected = detect_framework(file.path, result)
        if detected is not None:
            candidates.append((file, detected, result))
        else:
            findings.extend(result.findings)
    if len(candidates) != 1:
        _raise_if_unsafe(findings + [f for c in candidates for f in c[2].findings], policy, copy.digest, str(source))
        names = ", ".join(c[0].relpath for c in candidates) or "none"
        raise UsageError(f"{source}: expected exactly one model file in the folder, found {names}; pass the file")
    file, detected, result = candidates[0]
    if dynamic:  # the sandbox binds the copy's folder read-only, so external data is there too
        result = _scan(file, str(source / file.relpath), policy, dynamic=True)
    findings.extend(result.findings)
    return file, framework or detected, findings


def _raise_if_unsafe(findings: list[Finding], policy: Policy, digest: str, display: str) -> None:
    bad = sorted((f for f in findings if f.severity >= policy.fail_on), key=lambda f: -f.severity)
    if not bad:
        return
    worst = bad[0]
    more = f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""
    raise UnsafeModelError(
        f"{display}: refused to load: {worst.severity} {worst.rule_id} {worst.title}: {worst.evidence[:300]}{more}",
        tuple(bad),
        digest,
    )


def load(
    path: str | os.PathLike[str],
    framework: str | None = None,
    policy: Policy | str | os.PathLike[str] | None = None,
    *,
    dynamic: bool = True,
    restricted: bool | None = None,
) -> Any:
    """Load a model only if analysis of exactly the bytes being loaded passes.

    Args:
        path: a model file, a folder holding one model file (plus e.g. ONNX external data), or the URL of one
            remote file (``https://``, ``s3://``, ``hf://ORG/NAME@REV/FILE``; downloaded once into the private
            remote cache, pinned and content-addressed, then copied and analysed like a local file; docs/remote.md).
        framework: ``pickle``, ``joblib``, ``torch``, ``torchscript``, ``numpy``, ``keras``, ``onnx``,
            ``safetensors``, ``gguf``, ``xgboost`` or ``lightgbm``; ``None`` chooses from the content (never
            from the file name).
        policy: a :class:`Policy`, a TOML policy path, or ``None`` for the default (fail on MEDIUM).
        dynamic: also run the sandboxed dynamic analysis (recommended; needs bubblewrap and strace).
        restricted: load pickle-family formats (pickle, joblib, torch, numpy object arrays) with the
            restricted unpickler. ``None`` (default) and ``True`` do; ``False`` trusts the analysis alone.

    Returns:
        The loaded object: an estimator, a ``torch.nn.Module`` or state dict, an ``ndarray`` or ``dict`` of
        arrays (``.npz``), a Keras model, an ``onnx.ModelProto``, a ``dict`` of tensors (safetensors;
        torch tensors when torch is installed, numpy arrays otherwise), a ``gguf.GGUFReader`` or a
        ``xgboost.Booster`` / ``lightgbm.Booster``.

    Raises:
        UnsafeModelError: a finding at or above ``policy.fail_on``, or the restricted unpickler refused a
            global; ``.findings`` and ``.digest`` say which and of what bytes.
        SandboxUnavailable: ``dynamic`` and the sandbox cannot be created (nothing is loaded unsandboxed).
        LimitExceeded: the file is larger than ``policy.limits.max_file_size``.
        UsageError: no such path, no loader for the content, or an unknown ``framework``.
    """
    policy = _policy(policy)
    if framework is not None and framework not in LOADERS:
        raise UsageError(f"unknown framework {framework!r} (expected one of: {', '.join(sorted(LOADERS))})")
    if dynamic:
        from mlwarden.scan.dynamic.sandbox import check_available_cached

        check_available_cached()  # before touching the model: never fall back to an unsandboxed analysis
    shown = None
    if is_remote(path):
        source, shown = _remote(str(path), policy), redact(str(path))
    else:
        source = Path(path)
    copy = copy_model(source, policy.limits)
    try:
        file, chosen, findings = _analyse(copy, source, policy, framework, dynamic, shown)
        display = shown or (str(source / file.relpath) if copy.is_folder else str(source))
        _raise_if_unsafe(findings, policy, copy.digest, display)
        try:
            if chosen == ARCHIVE:
                return _load_archive(file.path, display, policy, dynamic, restricted, depth=1)
            return load_with(chosen, file.path, policy, restricted is not False and chosen in PICKLE_FAMILY, display)
        except UnsafeModelError as exc:
            exc.digest = copy.digest
            raise
    finally:
        copy.remove()


def _remote(url: str, policy: Policy) -> Path:
    """The cached copy of the one remote file ``url`` names (:mod:`mlwarden.scan.remote_cache`)."""
    from mlwarden.scan.remote import resolve
    from mlwarden.scan.remote_cache import RemoteCache

    items = resolve(url)
    if len(items) != 1:
        raise UsageError(f"{redact(url)}: names {len(items)} files; load one file (hf://ORG/NAME[@REV]/FILE)")
    if items[0].size > policy.limits.max_file_size:
        raise LimitExceeded("max_file_size", f"{items[0].display} is {items[0].size} bytes (not downloaded)")
    return RemoteCache().fetch(items[0], policy.limits.max_file_size).path


def _load_archive(path: Path, display: str, policy: Policy, dynamic: bool, restricted: bool | None, depth: int) -> Any:
    """Load every member of an archive on its own: ``{member name: loaded model, or bytes for other files}``.

    Each member is written into the private directory under a neutral name (never a path from the archive),
    analysed on its own (statically, and in the sandbox when ``dynamic``), and loaded like a top-level file.
    """
    from mlwarden.loader import legacy

    if depth > policy.limits.max_depth:
        raise UsageError(f"{display}: archives nested deeper than {policy.limits.max_depth}")
    out: dict[str, Any] = {}
    for index, (name, data) in enumerate(legacy.archive_members(path, policy.limits)):
        member = path.parent / f"{path.name}.member-{depth}-{index}"
        with open(member, "xb") as fh:
            fh.write(data)
        try:
            shown = f"{display} ▸ {name}"
            result = _scan(CopiedFile(name, member, len(data), ""), shown, policy, dynamic)
            _raise_if_unsafe(list(result.findings), policy, "", shown)
            chosen = detect_framework(member, result)
            if chosen == ARCHIVE:
                out[name] = _load_archive(member, shown, policy, dynamic, restricted, depth + 1)
            elif chosen is not None:
                out[name] = load_with(
                    chosen, member, policy, restricted is not False and chosen in PICKLE_FAMILY, shown
                )
            else:
                out[name] = data
        finally:
            member.unlink()
    return out
