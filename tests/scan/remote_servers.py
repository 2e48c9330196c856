"""Loopback servers for the remote-scan tests: ranged HTTP, a hub-shaped tree for huggingface_hub, moto S3.

``RangeServer`` answers HEAD and single-range GETs (``Range: bytes=a-b``) with a strong ETag, honours
``If-Match`` (412 when it does not match), can require HTTP Basic auth, and logs every request with the number of
body bytes it sent, so tests measure what a scan transferred. ``hub`` (one repository) and ``hubs`` (more) make it
answer like the Hugging Face Hub for the endpoints mlwarden calls (docs/remote.md):

* ``GET /api/models/{repo}[/revision/{rev}]?blobs=True`` -> ``{"id", "sha", "siblings": [...]}``
* ``GET|HEAD /{repo}/resolve/{commit}/{file}`` with Range, ``ETag`` and ``X-Repo-Commit``
* ``GET /api/models?author=ORG&search=Q&filter=TAG&sort=KEY&limit=N&expand=sha`` (what ``HfApi.list_models``
  sends) -> ``[{"_id", "id", "modelId", "sha"?}]`` at most ``page_size`` per page, the next page named by a
  ``Link: <...>; rel="next"`` header as the Hub paginates; ``sha`` (``main``'s commit) only when
  ``expand=sha`` is asked, as the Hub does
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlencode, urlsplit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Hub:
    """One hub repository: files per commit, and branch -> commit."""

    repo: str
    commits: dict[str, dict[str, bytes]]
    branches: dict[str, str]
    tags: tuple[str, ...] = ()
    downloads: int = 0

    def commit_of(self, rev: str) -> str | None:
        return self.branches.get(rev) or (rev if rev in self.commits else None)


@dataclass
class RangeServer:
    files: dict[str, bytes] = field(default_factory=dict)
    auth: tuple[str, str] | None = None
    hub: Hub | None = None
    hubs: list[Hub] = field(default_factory=list)
    page_size: int = 1000
    log: list[tuple[str, str, int]] = field(default_factory=list)
    redirects: dict[str, str] = field(default_factory=dict)
    auth_seen: list[str] = field(default_factory=list)
    _etags: dict[int, str] = field(default_factory=dict)

    def start(self) -> RangeServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                owner._answer(self, body=False)

            def do_GET(self) -> None:
                owner._answer(self, body=True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def sent(self) -> int:
        return sum(n for _, _, n in self.log)

    def _answer(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        if self.auth is not None:
            expected = "Basic " + base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            if h.headers.get("Authorization") != expected:
                return self._send(h, 401, b"", {}, body)
        path = unquote(urlsplit(h.path).path)
        if path in self.redirects:
            return self._send(h, 302, b"", {"Location": self.redirects[path]}, body)
        repos = ([self.hub] if self.hub is not None else []) + self.hubs
        if repos:
            self.auth_seen.append(h.command + " " + h.path + " " + h.headers.get("Authorization", ""))
        if path == "/api/models" and repos:
            return self._listing(h, repos, parse_qs(urlsplit(h.path).query), body)
        if any(self._hub(h, path, body, repo) for repo in repos):
            return None
        if repos and path.startswith("/api/models/"):
            return self._send(h, 404, b"{}", {"X-Error-Code": "RepoNotFound"}, body)
        data = self.files.get(path)
        if data is None:
            return self._send(h, 404, b"not found", {}, body)
        return self._serve(h, data, {}, body)

    def _listing(self, h: BaseHTTPRequestHandler, repos: list[Hub], query: dict[str, list[str]], body: bool) -> None:
        """``GET /api/models``: filter, sort, cut at ``limit``, one page of ``page_size`` from ``cursor``."""
        found = [r for r in repos if "author" not in query or r.repo.split("/")[0] == query["author"][0]]
        found = [r for r in found if "search" not in query or query["search"][0].lower() in r.repo.lower()]
        found = [r for r in found if all(tag in r.tags for tag in query.get("filter", []))]
        if query.get("sort") == ["downloads"]:
            found.sort(key=lambda r: -r.downloads)
        if "limit" in query:
            found = found[: int(query["limit"][0])]
        start = int(query.get("cursor", ["0"])[0])
        page = found[start : start + self.page_size]
        docs: list[dict[str, object]] = []
        for r in page:
            doc: dict[str, object] = {"_id": hashlib.sha1(r.repo.encode()).hexdigest()[:24], "id": r.repo}  # noqa: S324
            doc["modelId"] = r.repo
            if "sha" in query.get("expand", []) and r.commit_of("main"):
                doc["sha"] = r.commit_of("main")
            docs.append(doc)
        headers = {"Content-Type": "application/json"}
        if start + self.page_size < len(found):
            rest = {k: v for k, v in query.items() if k != "cursor"} | {"cursor": [str(start + self.page_size)]}
            headers["Link"] = f'<{self.url}/api/models?{urlencode(rest, doseq=True)}>; rel="next"'
        self._send(h, 200, json.dumps(docs).encode(), headers, body)

    def _hub(self, h: BaseHTTPRequestHandler, path: str, body: bool, hub: Hub) -> bool:
        m = re.fullmatch(rf"/api/models/{re.escape(hub.repo)}(?:/revision/([^/]+))?", path)
        if m:
            commit = hub.commit_of(m.group(1) or "main")
            if commit is None:
                self._send(h, 404, b"{}", {"X-Error-Code": "RevisionNotFound"}, body)
                return True
            siblings = [_sibling(name, data) for name, data in sorted(hub.commits[commit].items())]
            doc = {"id": hub.repo, "modelId": hub.repo, "sha": commit, "siblings": siblings, "private": False}
            self._send(h, 200, json.dumps(doc).encode(), {"Content-Type": "application/json"}, body)
            return True
        m = re.fullmatch(rf"/{re.escape(hub.repo)}/resolve/([^/]+)/(.+)", path)
        if m:
            commit = hub.commit_of(m.group(1))
            data = hub.commits.get(commit or "", {}).get(m.group(2))
            if commit is None or data is None:
                self._send(h, 404, b"", {"X-Error-Code": "EntryNotFound"}, body)
            else:
                self._serve(h, data, {"X-Repo-Commit": commit}, body)
            return True
        return False

    def _serve(self, h: BaseHTTPRequestHandler, data: bytes, extra: dict[str, str], body: bool) -> None:
        etag = self._etags.get(id(data))
        if etag is None:
            etag = self._etags[id(data)] = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
        headers = {"ETag": etag, "Accept-Ranges": "bytes", "Last-Modified": "Sat, 05 Dec 2026 10:00:00 GMT", **extra}
        match = h.headers.get("If-Match")
        if match is not None and match != etag:
            return self._send(h, 412, b"", headers, body)
        rng = re.fullmatch(r"bytes=(\d+)-(\d*)", h.headers.get("Range", ""))
        if rng is None:
            return self._send(h, 200, data, headers, body)
        start = int(rng.group(1))
        end = min(len(data) - 1, int(rng.group(2))) if rng.group(2) else len(data) - 1
        if start >= len(data):
            return self._send(h, 416, b"", {"Content-Range": f"bytes */{len(data)}"}, body)
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        return self._send(h, 206, data[start : end + 1], headers, body)

    def _send(self, h: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict[str, str], body: bool) -> None:
        self.log.append((h.command, h.path, len(data) if body else 0))  # before answering: the client sees it logged
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)


def _sibling(name: str, data: bytes) -> dict[str, object]:
    out: dict[str, object] = {"rfilename": name, "size": len(data), "blobId": hashlib.sha1(data).hexdigest()}  # noqa: S324 - git blob id shape
    if len(data) > 1024:
        out["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    return out
