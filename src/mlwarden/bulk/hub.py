"""Hugging Face organisations and Hub searches as bulk SOURCEs: ``hf://ORG`` and ``hf://?search=QUERY&...``.

A listing source names many model repositories rather than one. It is enumerated with
:meth:`huggingface_hub.HfApi.list_models` (the endpoint from ``HF_ENDPOINT``, the token from ``HF_TOKEN`` or the
token file), asking for each repository's current commit (``expand=sha``). Every repository becomes
``hf://ORG/NAME@COMMIT``, which the bulk sources then expand into files exactly as a ``hf://`` URL given by hand
(``docs/bulk.md``). The number of repositories is bounded (``max_repos``); a listing cut at the bound says so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from mlwarden.bulk.store import BulkError

#: Default bound on the repositories one listing source expands to (``--max-repos``).
DEFAULT_MAX_REPOS = 1000
#: Sort keys ``list_models`` accepts (``sort=`` in a search source).
SORTS = ("created_at", "downloads", "last_modified", "likes", "trending_score")
#: Query keys a listing source may carry.
KEYS = ("search", "author", "filter", "sort", "limit")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

Note = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class HubQuery:
    """What to ask ``list_models`` for.

    Attributes:
        source: the SOURCE as given (for messages; a search holds no credentials).
        author: an organisation or user name.
        search: a substring of the repository id.
        filters: tags every repository must have (``filter=`` may repeat).
        sort: one of :data:`SORTS` (descending, as the Hub sorts); ``None``: the Hub's order.
        limit: the first ``limit`` repositories only (a sample the user asked for: no truncation note).
    """

    source: str
    author: str | None = None
    search: str | None = None
    filters: tuple[str, ...] = ()
    sort: str | None = None
    limit: int | None = None


def parse_listing(source: str) -> HubQuery | None:
    """The query a listing source names, or ``None`` when ``source`` is not one (e.g. ``hf://ORG/NAME``).

    ``hf://ORG`` lists every model of ``ORG``; ``hf://ORG?search=bert`` narrows it; ``hf://?search=bert&author=ORG
    &filter=pytorch&sort=downloads&limit=50`` is a Hub search.

    Raises:
        BulkError: an unknown query key, an empty search, a bad ``sort`` or ``limit``.
    """
    if not source.lower().startswith("hf://"):
        return None
    parts = urlsplit(source)
    org = parts.netloc
    if parts.path.strip("/") or "@" in org:  # hf://ORG/NAME[...]: one repository, handled by the scanner itself
        return None
    if org and not _NAME.match(org):
        raise BulkError(f"{source}: {org!r} is not a Hub organisation or user name")
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise BulkError(f"{source}: malformed query (expected key=value pairs joined by &)") from None
    unknown = sorted(set(query) - set(KEYS))
    if unknown:
        raise BulkError(f"{source}: unknown query key {unknown[0]!r} (allowed: {', '.join(KEYS)})")
    if org and "author" in query:
        raise BulkError(f"{source}: give the organisation either as hf://ORG or as author=, not both")
    author = org or _one(query, "author", source)
    search = _one(query, "search", source)
    filters = tuple(v for v in query.get("filter", []) if v)
    if not (author or search or filters):
        raise BulkError(f"{source}: a Hub listing needs an organisation, search=, author= or filter=")
    sort = _one(query, "sort", source)
    if sort is not None and sort not in SORTS:
        raise BulkError(f"{source}: sort must be one of {', '.join(SORTS)}")
    limit_text = _one(query, "limit", source)
    limit = None
    if limit_text is not None:
        if not limit_text.isdigit() or int(limit_text) < 1:
            raise BulkError(f"{source}: limit must be a positive integer")
        limit = int(limit_text)
    return HubQuery(source, author, search, filters, sort, limit)


def _one(query: dict[str, list[str]], key: str, source: str) -> str | None:
    values = query.get(key, [])
    if len(values) > 1:
        raise BulkError(f"{source}: {key}= given more than once")
    if values and not values[0]:
        raise BulkError(f"{source}: {key}= is empty")
    return values[0] if values else None


def _endpoint() -> str:
    """The Hub endpoint, read now (``HF_ENDPOINT``), as ``mlwarden.scan.remote_http`` reads it for ``hf://``."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


@contextlib.contextmanager
def _quiet_retries() -> Iterator[None]:
    """Silence huggingface_hub's per-retry warnings (its HTTP client retries on its own); our error says it once."""
    logger = logging.getLogger("huggingface_hub.utils._http")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def list_repos(query: HubQuery, max_repos: int = DEFAULT_MAX_REPOS, on_note: Note | None = None) -> list[str]:
    """``hf://ORG/NAME@COMMIT`` for every model repository ``query`` names, at most ``max_repos`` of them.

    When the Hub has more than ``max_repos`` (and the query set no smaller ``limit``), the first ``max_repos`` are
    kept and ``on_note`` is told so. A repository the listing returns without a commit is kept unpinned
    (``hf://ORG/NAME``): the scanner resolves ``main`` to a commit once, when it expands it.

    Raises:
        BulkError: huggingface_hub is missing, the endpoint cannot be reached or refuses the listing, or the
            listing is empty (an unknown organisation, or nothing public matches).
    """
    if max_repos < 1:
        raise BulkError("--max-repos must be >= 1")
    try:
        from huggingface_hub import HfApi, get_token
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError:
        raise BulkError("hf:// needs huggingface_hub (pip install 'mlwarden[remote]')") from None
    wanted = max_repos + 1 if query.limit is None or query.limit > max_repos else query.limit
    api = HfApi(endpoint=_endpoint(), token=get_token())
    try:
        with _quiet_retries():
            repos = _listing(api, query, wanted)
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        raise BulkError(f"{query.source}: the Hub refused the listing (HTTP {status}) at {api.endpoint}") from None
    except Exception as exc:  # noqa: BLE001 - the HTTP client's connect/timeout errors: one clear line, no traceback
        reason = f"{type(exc).__name__}, after huggingface_hub's retries"
        raise BulkError(f"{query.source}: cannot list models at {api.endpoint}: {reason}") from None
    if not repos:
        what = f"organisation {query.author!r}" if query.author and not (query.search or query.filters) else "query"
        raise BulkError(f"{query.source}: no model repositories (unknown {what}, or nothing public matches)")
    if len(repos) > max_repos:
        repos = repos[:max_repos]
        if on_note is not None:
            on_note(
                f"{query.source}: more than {max_repos} model repositories; scanning the first {max_repos}"
                " (raise --max-repos, or narrow the source)"
            )
    return repos


def _listing(api: Any, query: HubQuery, wanted: int) -> list[str]:
    """``hf://ID@SHA`` (or ``hf://ID`` when the Hub gives no commit) for the first ``wanted`` models of ``query``."""
    listing = api.list_models(
        author=query.author,
        search=query.search,
        filter=list(query.filters) or None,
        sort=query.sort,  # checked against SORTS
        limit=wanted,
        expand=["sha"],
    )
    return [f"hf://{info.id}@{info.sha}" if info.sha else f"hf://{info.id}" for info in listing]
