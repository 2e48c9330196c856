"""Get a registry version ready to serve: resolve, copy, verify the copy, load it safely, build its guard.

The chain never re-reads the registry's files after checking them: the stored bytes are copied once into a
private directory (mode 0700), the *copy* is re-hashed against the version's digest and its signature checked
with a deploy-trusted key (:meth:`Registry.verify_copy`, audited), and the safe loader then analyses and loads
that same copy. Only approved or deployed versions are served; the baseline captured at approval comes from
the version's ``baseline`` attachment and must have been captured on the same digest.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mlwarden.core.errors import MlwardenError, UsageError
from mlwarden.registry.roles import Principal
from mlwarden.registry.service import Registry
from mlwarden.registry.states import State
from mlwarden.registry.values import AttachmentKind, VersionInfo
from mlwarden.serve.calibration import GuardBaseline
from mlwarden.serve.checks import RequestGuard
from mlwarden.serve.policy import GuardPolicy
from mlwarden.serve.servable import Servable, load_servable

log = logging.getLogger("mlwarden.serve")

#: States a version may be served in.
SERVABLE_STATES = frozenset({State.APPROVED, State.DEPLOYED})


class ServeError(MlwardenError):
    """A version cannot be served (wrong state, failed verification, missing baseline, unservable model)."""


@dataclass(frozen=True, slots=True)
class Deployment:
    """One loaded, verified version with its guard.

    Attributes:
        info: the version as the registry reported it when it was loaded.
        servable: the model.
        baseline: the baseline captured at approval (``None`` only when the policy does not require one).
        guard: the request checks built for this version.
        signature_bundle: the bytes of its signature attachment (for forensics bundles).
        loaded_at: when it was loaded (unix time).
        load_seconds: how long resolving, verifying and loading took.
    """

    info: VersionInfo
    servable: Servable
    baseline: GuardBaseline | None
    guard: RequestGuard
    signature_bundle: bytes | None
    loaded_at: float
    load_seconds: float


def _copy(source: Path, into: Path) -> Path:
    target = into / source.name
    if source.is_dir():
        shutil.copytree(source, target, symlinks=False)
    else:
        shutil.copyfile(source, target)
    return target


def _baseline(registry: Registry, actor: Principal, info: VersionInfo, policy: GuardPolicy) -> GuardBaseline | None:
    attachment = info.latest(AttachmentKind.BASELINE)
    if attachment is None:
        if policy.input.require_baseline:
            raise ServeError(
                f"{info.ref} has no baseline attachment; capture one at approval (mlwarden baseline capture "
                f"{info.ref} --reference DATA) or set input.require_baseline: false in the guard policy"
            )
        return None
    path = registry.attachment_path(actor, info.ref, attachment.id)
    baseline = GuardBaseline.from_json(path.read_bytes())
    if baseline.model_digest and baseline.model_digest != info.digest:
        raise ServeError(
            f"the baseline of {info.ref} was captured on {baseline.model_digest}, not on this version "
            f"({info.digest}); capture it again"
        )
    return baseline


def prepare(
    registry: Registry, actor: Principal, ref: str, policy: GuardPolicy, *, dynamic: bool = False
) -> Deployment:
    """Resolve ``ref`` and make it ready to serve (see the module docstring).

    Raises:
        ServeError: the version is not approved or deployed, or has no usable baseline.
        GateRefused: its copy's digest or signature does not verify.
        UnsafeModelError: the safe loader refused it.
        RegistryError / DatabaseError: the registry refused or is unreachable.
    """
    started = time.monotonic()
    info = registry.resolve(actor, ref)
    if info.state not in SERVABLE_STATES:
        raise ServeError(f"{info.ref} is {info.state.value}: only approved or deployed versions are served")
    if policy.model is not None and policy.model != info.model:
        raise ServeError(f"the guard policy is for model {policy.model!r}, not {info.model!r}")
    baseline = _baseline(registry, actor, info, policy)
    signature = info.latest(AttachmentKind.SIGNATURE)
    bundle = registry.attachment_path(actor, info.ref, signature.id).read_bytes() if signature else None
    source = registry.artifact_path(actor, info.ref)
    workdir = Path(tempfile.mkdtemp(prefix="mlwarden-serve-"))  # mkdtemp: mode 0700, ours alone
    try:
        try:
            copy = _copy(source, workdir)
        except OSError as exc:
            raise ServeError(f"cannot copy {info.ref} for loading: {exc.strerror or exc}") from None
        registry.verify_copy(actor, info.ref, copy, signature_required=policy.limits.require_signature)
        servable = load_servable(copy, dynamic=dynamic)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if baseline is not None and baseline.input_kind != servable.input_kind:
        raise ServeError(
            f"the baseline of {info.ref} is for {baseline.input_kind} input, the model takes {servable.input_kind}"
        )
    try:
        guard = RequestGuard(policy, servable, baseline)
    except UsageError as exc:
        raise ServeError(f"cannot build the guard for {info.ref}: {exc}") from None
    took = time.monotonic() - started
    log.info("loaded %s (%s) in %.2f s", info.ref, info.digest, took)
    return Deployment(info, servable, baseline, guard, bundle, time.time(), took)
