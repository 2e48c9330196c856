"""Reading models and versions, resolving references, fetching the ML-BOM, and registering a new version."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path as FsPath
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from mlwarden.api.deps import Actor, LimitsDep, RegistryDep
from mlwarden.api.routes import errors
from mlwarden.api.schemas import ModelOut, VersionOut
from mlwarden.api.upload import FILE_FIELDS, TEXT_FIELDS, UploadReceiver
from mlwarden.core.errors import LimitExceeded
from mlwarden.registry.errors import BadInput, NotFound
from mlwarden.registry.roles import Permission
from mlwarden.registry.values import AttachmentKind, check_name

router = APIRouter(prefix="/v1", tags=["models"])
BOM_MEDIA_TYPE = "application/vnd.cyclonedx+json"

Name = Annotated[str, Path(description="model name (1-100 characters A-Z a-z 0-9 . _ -)", max_length=100)]
#: Largest id or number a path or query accepts: beyond it nothing can exist (and the database's integer would
#: overflow: a 500 before this bound).
MAX_ID = 2**31 - 1
Version = Annotated[int, Path(description="version number", ge=1, le=MAX_ID)]
Alias = Annotated[str, Path(description="alias name, e.g. `production`", max_length=100)]

#: OpenAPI description of the multipart upload (the endpoint parses the stream itself, see api/upload.py).
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["model"],
                    "properties": {
                        "model": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "the model file, or every file of a model folder with its path "
                            "inside the folder as the part's file name (weights/part-1.bin)",
                        },
                        "signature": {"type": "string", "format": "binary", "description": "signature bundle"},
                        "dataset_manifest": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "signed dataset manifests",
                        },
                        "training_record": {"type": "string", "format": "binary", "description": "training record"},
                        "framework": {"type": "string", "description": "sklearn, torch, ..."},
                        "description": {"type": "string"},
                    },
                }
            }
        },
    }
}
_DOCUMENTED = set(_UPLOAD_BODY["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"])  # type: ignore[index]
if _DOCUMENTED != {*FILE_FIELDS, *TEXT_FIELDS}:
    raise RuntimeError("the upload body's OpenAPI schema does not list exactly the accepted form fields")


@router.get("/models", response_model=list[ModelOut], responses=errors(401, 403, 503), summary="List models")
def list_models(registry: RegistryDep, actor: Actor) -> list[ModelOut]:
    """Every model with its number of versions and its aliases."""
    return [ModelOut.of(m) for m in registry.list_models(actor)]


@router.get(
    "/models/{name}/versions",
    response_model=list[VersionOut],
    responses=errors(401, 403, 404, 422, 503),
    summary="List a model's versions",
)
def list_versions(name: Name, registry: RegistryDep, actor: Actor) -> list[VersionOut]:
    """Every version of the model, oldest first."""
    return [VersionOut.of(v) for v in registry.versions(actor, name)]


@router.get(
    "/models/{name}/versions/{version}",
    response_model=VersionOut,
    responses=errors(401, 403, 404, 422, 503),
    summary="Get a version",
)
def get_version(name: Name, version: Version, registry: RegistryDep, actor: Actor) -> VersionOut:
    """One version: state, digests, files, aliases, attachments."""
    return VersionOut.of(registry.get(actor, f"{name}:{version}"))


@router.get(
    "/models/{name}/aliases/{alias}",
    response_model=VersionOut,
    responses=errors(401, 403, 404, 422, 503),
    summary="Resolve an alias",
)
def get_alias(name: Name, alias: Alias, registry: RegistryDep, actor: Actor) -> VersionOut:
    """The version an alias points at now."""
    return VersionOut.of(registry.resolve(actor, f"{name}@{alias}"))


@router.get(
    "/resolve/{ref}",
    response_model=VersionOut,
    responses=errors(401, 403, 404, 422, 503),
    summary="Resolve a reference",
)
def resolve(
    ref: Annotated[str, Path(description="`NAME:VERSION` or `NAME@ALIAS`", max_length=201)],
    registry: RegistryDep,
    actor: Actor,
) -> VersionOut:
    """The version ``fraud:3`` or ``fraud@production`` names."""
    return VersionOut.of(registry.resolve(actor, ref))


@router.get(
    "/models/{name}/versions/{version}/bom",
    response_class=FileResponse,
    responses={
        200: {
            "description": "the version's ML-BOM (CycloneDX 1.6 JSON), byte for byte as stored",
            "content": {BOM_MEDIA_TYPE: {"schema": {"type": "object"}}},
        },
        **errors(401, 403, 404, 422, 503),
    },
    summary="Get a version's ML-BOM",
)
def get_bom(name: Name, version: Version, registry: RegistryDep, actor: Actor) -> FileResponse:
    """The CycloneDX ML-BOM the registry wrote when the version was registered (verified against its digest)."""
    ref = f"{name}:{version}"
    bom = registry.get(actor, ref).latest(AttachmentKind.BOM)
    if bom is None:
        raise NotFound(f"{ref} has no ML-BOM")
    return FileResponse(registry.attachment_path(actor, ref, bom.id), media_type=BOM_MEDIA_TYPE)


@router.get(
    "/models/{name}/versions/{version}/attachments/{attachment_id}",
    response_class=FileResponse,
    responses={
        200: {"description": "the attachment's bytes as stored", "content": {"application/octet-stream": {}}},
        **errors(401, 403, 404, 422, 503),
    },
    summary="Download an attachment",
)
def get_attachment(
    name: Name,
    version: Version,
    attachment_id: Annotated[
        int, Path(ge=1, le=MAX_ID, description="the attachment's id (see the version's attachments)")
    ],
    registry: RegistryDep,
    actor: Actor,
) -> FileResponse:
    """A signature bundle, dataset manifest, training record, scan report or ML-BOM, verified against its digest."""
    ref = f"{name}:{version}"
    info = next((a for a in registry.get(actor, ref).attachments if a.id == attachment_id), None)
    if info is None:
        raise NotFound(f"{ref} has no attachment {attachment_id}")
    path = registry.attachment_path(actor, ref, attachment_id)
    media_type = BOM_MEDIA_TYPE if info.kind is AttachmentKind.BOM else "application/octet-stream"
    return FileResponse(path, media_type=media_type, filename=info.filename)


@router.post(
    "/models/{name}/versions",
    status_code=201,
    response_model=VersionOut,
    responses=errors(401, 403, 409, 413, 415, 422, 503),
    openapi_extra=_UPLOAD_BODY,
    summary="Register a new version",
)
async def register(name: Name, request: Request, registry: RegistryDep, actor: Actor, limits: LimitsDep) -> VersionOut:
    """Upload a model (and its signature, dataset manifests, training record) as a new version in ``received``.

    The upload is staged in a temporary folder while it streams in (within the configured size limit) and the
    registry copies it into its content-addressed store; the staging folder is removed in every case.
    """
    check_name("model", name)  # before reading gigabytes for a name the registry would refuse
    if not actor.can(Permission.REGISTER) or not actor.within(f"model:{name}"):
        # Refuse before reading the body too. Through the service, which checks the role before it looks at the
        # path: the refusal is its own decision, with its message, and is audited like any other.
        await run_in_threadpool(registry.register, actor, name, FsPath(os.devnull))
    with tempfile.TemporaryDirectory(prefix="mlwarden-upload-", dir=limits.upload_dir) as staging:
        receiver = UploadReceiver(FsPath(staging), name, limits)
        upload = await receiver.receive(request.headers.get("content-type", ""), request.stream())
        try:
            info = await run_in_threadpool(
                registry.register,
                actor,
                name,
                upload.model_path,
                signature=upload.signature,
                dataset_manifests=upload.dataset_manifests,
                training_record=upload.training_record,
                framework=upload.framework,
                description=upload.description,
            )
        except BadInput as exc:
            # Messages name the file; the client knows it by its upload name, not by our staging path.
            raise BadInput(_unstaged(str(exc), staging)) from None
        except LimitExceeded as exc:
            raise LimitExceeded(exc.limit, _unstaged(exc.detail, staging)) from None
    return VersionOut.of(info)


def _unstaged(message: str, staging: str) -> str:
    """``message`` without the staging folder (``<staging>/model/fraud/w.npy`` -> ``fraud/w.npy``)."""
    message = re.sub(re.escape(staging) + r"/attachments/[^/\s]+/", "", message)
    return message.replace(f"{staging}/model/", "")
