"""The registry's HTTP API: a FastAPI app over one :class:`~mlwarden.registry.service.Registry`.

The app is a thin translation layer. Every endpoint authenticates the bearer token, calls one service method
with the resulting principal, and turns the returned value (or the raised refusal) into JSON; the service owns
roles, separation of duties, transitions, gates and the audit log, exactly as it does for the CLI.

OpenAPI: ``/openapi.json``, interactive docs at ``/docs``. Serve it with ``mlwarden api serve`` (uvicorn).
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from mlwarden._version import __version__
from mlwarden.api.deps import AuthenticateFirst, RegistryDep
from mlwarden.api.routes import admin, lifecycle, models, retire
from mlwarden.api.schemas import Health
from mlwarden.http import errors
from mlwarden.http.limits import BodyLimit, Limits
from mlwarden.http.responses import errors as error_responses
from mlwarden.registry.db import ping
from mlwarden.registry.service import Registry

TAGS = [
    {"name": "health", "description": "Liveness and database reachability (no token needed)."},
    {"name": "models", "description": "Models, versions, references, ML-BOMs; registering a new version."},
    {"name": "lifecycle", "description": "Scan, approve, deploy, quarantine, release, roll back — each gated."},
    {"name": "users", "description": "The caller; users and their roles (admin)."},
    {"name": "tokens", "description": "API tokens: issued once in plaintext, stored hashed, revocable (admin)."},
    {"name": "audit", "description": "The tamper-evident audit log and its signed checkpoints."},
]

health = APIRouter(tags=["health"])


@health.get("/healthz", response_model=Health, responses=error_responses(503), summary="Health check")
def healthz(registry: RegistryDep) -> Health:
    """``ok`` when the service runs and its database answers a ``SELECT 1``; 503 otherwise."""
    ping(registry.database)
    return Health(version=__version__)


def create_app(
    registry: Registry, *, limits: Limits | None = None, retirement: retire.RetirementSettings | None = None
) -> FastAPI:
    """The HTTP API over ``registry``.

    Args:
        registry: the open registry every request goes through (shared by the worker threads; the service and
            its database layer are thread-safe: one SQLAlchemy engine, one session per call).
        limits: request size and paging limits (default :class:`Limits`: 2 GiB uploads, 1 MiB JSON bodies).
        retirement: certificate key and folders for ``/retire`` (default: the registry home; no archive mode).
    """
    app = FastAPI(
        title="mlwarden registry",
        version=__version__,
        description="A gated model registry: versions move received → scanned → approved → deployed (→ "
        "quarantined | rolled back → retired) only through policy gates, by callers whose roles allow it, and "
        "every action — allowed or refused — lands in a tamper-evident audit log. Authenticate with "
        "`Authorization: Bearer mlw_...`.",
        openapi_tags=TAGS,
        license_info={"name": "Apache-2.0", "identifier": "Apache-2.0"},
    )
    app.state.registry = registry
    app.state.limits = limits or Limits()
    app.state.retirement = retirement or retire.RetirementSettings()
    errors.install(app)
    app.include_router(health)
    app.include_router(models.router)
    app.include_router(lifecycle.router)
    app.include_router(retire.router)
    app.include_router(admin.router)
    # Middleware order: the last added runs first. BodyLimit sees the raw stream before any handler reads it;
    # CatchAll sits inside Starlette's own error middleware so it answers unexpected errors itself.
    # AuthenticateFirst runs before any route reads or parses the body: an anonymous caller learns nothing from
    # a 422 and streams nothing to disk.
    app.add_middleware(errors.CatchAll)
    app.add_middleware(AuthenticateFirst, registry=registry)
    app.add_middleware(BodyLimit, limits=app.state.limits)
    return app
