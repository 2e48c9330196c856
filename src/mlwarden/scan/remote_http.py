"""Ranged HTTP reads for ``http(s)://`` URLs and Hugging Face Hub repositories (``hf://ORG/NAME[@REVISION]``).

``requests`` with explicit limits: ``TIMEOUT`` (connect, read) seconds per request, ``RETRIES`` retries with
exponential back-off on connection errors, 429 and 5xx, at most ``MAX_REDIRECTS`` redirects. A plain URL's
redirects must stay on its host (its credentials are never sent elsewhere); the Hub's ``resolve`` redirects to its
storage CDN are followed with the token dropped on the host change. Each range request carries ``If-Match`` with
the object's strong ETag, so an object replaced mid-scan fails the scan instead of mixing two versions.
"""

from __future__ import annotations

import os
import re
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit

from mlwarden.scan.remote import (
    MAX_FILES,
    MAX_REDIRECTS,
    RETRIES,
    TIMEOUT,
    RemoteError,
    RemoteFile,
    RemoteNotFoundError,
    redact,
)

if TYPE_CHECKING:
    from mlwarden.scan.remote_folder import Listing

_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_HF = re.compile(r"^hf://(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/]+))?(?:/(?P<path>.*))?$")


class _Client:
    """One host's session: auth, redirects, retries, timeouts."""

    def __init__(self, url: str, headers: dict[str, str], any_host: bool) -> None:
        import requests

        parts = urlsplit(url)
        self.url = urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path, parts.query, ""))
        self.raw = url
        self.host = parts.hostname
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "mlwarden-remote-scan"
        if parts.username is not None:
            self.session.auth = (parts.username, parts.password or "")
        self.headers = headers
        self.any_host = any_host

    def request(self, method: str, headers: dict[str, str]) -> Any:
        """``method`` on the URL, following allowed redirects; raises :class:`RemoteError` with a scrubbed message."""
        import requests

        url, send = self.url, {**self.headers, **headers}
        for _ in range(MAX_REDIRECTS + 1):
            resp = self._with_retries(method, url, send, requests)
            if resp.status_code not in (301, 302, 303, 307, 308):
                return resp
            target = urljoin(url, resp.headers.get("Location", ""))
            resp.close()
            if urlsplit(target).hostname != self.host:
                if not self.any_host:
                    raise RemoteError(f"{redact(self.raw)}: redirected to another host ({urlsplit(target).hostname})")
                send = {k: v for k, v in send.items() if k.lower() != "authorization"}
                self.session.auth = None
            url = target
        raise RemoteError(f"{redact(self.raw)}: more than {MAX_REDIRECTS} redirects")

    def _with_retries(self, method: str, url: str, headers: dict[str, str], requests: Any) -> Any:
        for attempt in range(RETRIES + 1):
            try:
                resp = self.session.request(
                    method, url, headers=headers, timeout=TIMEOUT, allow_redirects=False, stream=True
                )
            except requests.RequestException as exc:
                if attempt == RETRIES:
                    raise RemoteError(f"{redact(self.raw)}: {type(exc).__name__} after {RETRIES} retries") from None
            else:
                if resp.status_code not in _RETRY_STATUS or attempt == RETRIES:
                    return resp
                resp.close()
            time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")


def _check(resp: Any, display: str) -> None:
    if resp.status_code in (401, 403):
        raise RemoteError(f"{display}: access refused (HTTP {resp.status_code}); check the credentials")
    if resp.status_code == 404:
        raise RemoteNotFoundError(f"{display}: no such object (HTTP 404)")
    if resp.status_code == 412:
        raise RemoteError(f"{display}: object changed during the scan (If-Match failed)")
    if resp.status_code >= 400:
        raise RemoteError(f"{display}: HTTP {resp.status_code}")


def _metadata(client: _Client, display: str) -> tuple[int, dict[str, str]]:
    """Size and pins from HEAD (or from a one-byte GET when HEAD gives no length)."""
    resp = client.request("HEAD", {})
    resp.close()
    size: int | None = None
    if resp.status_code < 400 and resp.headers.get("Content-Length", "").isdigit():
        size = int(resp.headers["Content-Length"])
    else:
        resp = client.request("GET", {"Range": "bytes=0-0"})
        resp.close()
        _check(resp, display)
        match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if resp.status_code != 206 or match is None or match.group(3) == "*":
            raise RemoteError(f"{display}: the server does not support range requests")
        size = int(match.group(3))
    _check(resp, display)
    pins = {}
    for header, name in (("ETag", "etag"), ("Last-Modified", "last_modified")):
        if resp.headers.get(header):
            pins[name] = resp.headers[header]
    return size, pins


def _fetcher(client: _Client, display: str, size: int, etag: str | None) -> Any:
    """``fetch(start, end)`` with Range (and If-Match on a strong ETag)."""
    pin = {"If-Match": etag} if etag and not etag.startswith("W/") else {}

    def fetch(start: int, end: int) -> bytes:
        for attempt in range(RETRIES + 1):
            resp = client.request("GET", {"Range": f"bytes={start}-{end - 1}", **pin})
            try:
                _check(resp, display)
                whole = resp.status_code == 200 and start == 0 and end == size
                if resp.status_code != 206 and not whole:
                    raise RemoteError(f"{display}: the server ignored the range request (HTTP {resp.status_code})")
                match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                if not whole and (match is None or int(match.group(1)) != start):
                    raise RemoteError(f"{display}: unexpected Content-Range {resp.headers.get('Content-Range')!r}")
                return bytes(resp.raw.read(end - start, decode_content=True))
            except RemoteError:
                raise
            except Exception as exc:  # noqa: BLE001 - a body cut mid-read (urllib3 errors): retry, then a clear error
                if attempt == RETRIES:
                    raise RemoteError(f"{display}: {type(exc).__name__} while reading") from None
            finally:
                resp.close()
            time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    return fetch


def http_file(url: str) -> RemoteFile:
    """An ``http(s)://`` object read with ranged GETs (one URL is one file: no listing over HTTP).

    The names a check asks about beside it are looked up with a HEAD each (:func:`_http_lookups`).
    """
    display = redact(url)
    client = _Client(url, {"Accept-Encoding": "identity"}, any_host=False)
    size, pins = _metadata(client, display)

    def verify() -> str | None:
        _, now = _metadata(client, display)
        changed = [k for k in ("etag", "last_modified") if pins.get(k) != now.get(k)]
        return f"{display}: object changed during the scan ({', '.join(changed)})" if changed else None

    item = RemoteFile(display, size, _fetcher(client, display, size, pins.get("etag")), pins, verify)
    item.listing, item.key = _http_lookups(url), unquote(urlsplit(url).path).lstrip("/")
    return item


def _http_lookups(url: str) -> Listing:
    """Names beside an HTTP object, each looked up with a HEAD on the same host and credentials.

    The sibling's URL is the object's with the path replaced and no query: a presigned URL's signature covers one
    object only, so a sibling of a presigned URL is refused (and the scan of the file is an error, not clean).
    """
    from mlwarden.scan.remote_folder import Listing

    parts = urlsplit(url)

    def lookup(key: str) -> RemoteFile | None:
        try:
            return http_file(urlunsplit((parts.scheme, parts.netloc, quote("/" + key), "", "")))
        except RemoteNotFoundError:
            return None

    return Listing(None, lookup)


def _endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hf_files(url: str) -> list[RemoteFile]:
    """The files of a Hub model repository (or of one path in it), pinned to the commit the revision resolves to.

    The commit is resolved once (``model_info``); every file is then read at that commit, so a branch that moves
    during the scan cannot change what is read. The token comes from ``HF_TOKEN`` or the token file
    (``huggingface_hub.get_token``) and is sent only to the endpoint.
    """
    match = _HF.match(url)
    if match is None:
        raise RemoteError(f"{redact(url)}: expected hf://ORG/NAME[@REVISION][/PATH]")
    if match.group("repo").split("/")[0] in ("datasets", "spaces", "buckets"):
        raise RemoteError(f"{redact(url)}: only model repositories are scanned (hf://ORG/NAME)")
    try:
        from huggingface_hub import HfApi, get_token
        from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
    except ImportError:
        raise RemoteError("hf:// needs huggingface_hub (pip install 'mlwarden[remote]')") from None
    repo, revision, sub = match.group("repo"), match.group("rev"), (match.group("path") or "").strip("/")
    endpoint, token = _endpoint(), get_token()
    try:
        info = HfApi(endpoint=endpoint, token=token).model_info(repo, revision=revision, files_metadata=True)
    except RevisionNotFoundError:
        raise RemoteError(f"hf://{repo}: no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise RemoteError(f"hf://{repo}: no such repository (or it is private and no token allows it)") from None
    except HfHubHTTPError as exc:
        raise RemoteError(f"hf://{repo}: {type(exc).__name__} (HTTP {_status(exc)})") from None
    commit = str(info.sha)
    siblings = [s for s in info.siblings or () if not sub or s.rfilename == sub or s.rfilename.startswith(sub + "/")]
    if not siblings:
        raise RemoteError(f"hf://{repo}@{commit}: no file {sub!r}" if sub else f"hf://{repo}: no files")
    if len(siblings) > MAX_FILES:
        raise RemoteError(f"hf://{repo}: {len(siblings)} files, more than {MAX_FILES}; name a path in it")
    headers = {"Accept-Encoding": "identity", **({"Authorization": f"Bearer {token}"} if token else {})}
    everything = {s.rfilename: s for s in info.siblings or ()}
    built: dict[str, RemoteFile] = {}

    def make(name: str) -> RemoteFile | None:
        s = everything.get(name)
        if s is None:
            return None
        if name not in built:
            display = f"hf://{repo}@{commit}/{s.rfilename}"
            client = _Client(f"{endpoint}/{repo}/resolve/{commit}/{quote(s.rfilename)}", headers, any_host=True)
            size = s.lfs.size if s.lfs is not None else s.size
            if size is None:
                size, _ = _metadata(client, display)
            pins = {"commit": commit, "revision": revision or "main"}
            if s.lfs is not None:
                pins["sha256"] = s.lfs.sha256
            if s.blob_id:
                pins["etag"] = s.blob_id
            built[name] = RemoteFile(display, int(size), _fetcher(client, display, int(size), None), pins)
            built[name].listing, built[name].key = listing, name
        return built[name]

    from mlwarden.scan.remote_folder import Listing

    listing = Listing(everything, make)  # the whole repository at the commit: checks beside a file cost no request
    return [f for f in (make(s.rfilename) for s in sorted(siblings, key=lambda s: s.rfilename)) if f is not None]


def _status(exc: Any) -> object:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", "?")
