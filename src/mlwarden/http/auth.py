"""Bearer tokens as both services read them: the OpenAPI scheme and the longest value worth hashing."""

from __future__ import annotations

from fastapi.security import HTTPBearer

#: Longest ``Authorization`` value worth hashing; real tokens are 47 characters.
MAX_TOKEN_LENGTH = 256

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="An API token issued by an admin (`POST /v1/users/{name}/tokens` or the CLI): "
    "`Authorization: Bearer mlw_...`",
)
