"""The registry's HTTP API (FastAPI): ``create_app(registry)``; serve it with ``mlwarden api serve``.

Needs the ``server`` extra (``pip install 'mlwarden[server]'``: fastapi, uvicorn, python-multipart).
"""

from __future__ import annotations

from mlwarden.api.app import create_app
from mlwarden.http.limits import Limits

__all__ = ["Limits", "create_app"]
