"""Receive a model upload (``multipart/form-data``) straight into a staging folder, part by part.

The body is parsed as it streams in (``python-multipart``'s push parser), and each file part is written to its
own file in 1 MiB batches from a worker thread, so neither a 2 GiB model nor a slow client holds memory or the
event loop. The size limit is enforced by :class:`~mlwarden.http.limits.BodyLimit` on the same stream.

Form fields (anything else is refused, so a typo cannot silently drop an attachment):

* ``model`` — one or more files. One part whose file name has no ``/`` is a single-file model; otherwise the
  parts form a folder and each file name is the file's path inside it (``weights/part-1.bin``).
* ``signature`` (at most one), ``dataset_manifest`` (any number), ``training_record`` (at most one) — files.
* ``framework``, ``description`` — short text.

File names from the client never choose where attachments go (only their base name is kept), and model paths
are checked (relative, no ``..``, no duplicates) before anything is created; files are opened with
``O_EXCL | O_NOFOLLOW``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

import python_multipart
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool

from mlwarden.http.errors import ApiError
from mlwarden.http.limits import Limits, MiB

FILE_FIELDS = ("model", "signature", "dataset_manifest", "training_record")
TEXT_FIELDS = ("framework", "description")
_SINGLE = ("signature", "training_record")
_FLUSH_AT = 1 * MiB
_OPEN = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True, slots=True)
class Upload:
    """What a registration request sent, staged on disk.

    Attributes:
        model_path: the single model file, or the folder holding every model file.
        signature: the signature bundle, if sent.
        dataset_manifests: the dataset manifests, in the order sent.
        training_record: the training record, if sent.
        framework: the declared framework, if any.
        description: free text.
    """

    model_path: Path
    signature: Path | None
    dataset_manifests: tuple[Path, ...]
    training_record: Path | None
    framework: str | None
    description: str


def invalid(message: str) -> ApiError:
    """A 422 about the upload's form."""
    return ApiError(422, "invalid_input", message)


def model_member(filename: str) -> PurePosixPath:
    """A model part's file name as a safe relative path.

    Raises:
        ApiError: empty, absolute, with ``.``/``..``/empty segments, backslashes or control characters.
    """
    if not filename or len(filename) > 4096:
        raise invalid("a model part needs a file name (the file's path inside the model, 1-4096 characters)")
    if filename.startswith("/") or "\\" in filename or any(ord(c) < 32 or ord(c) == 127 for c in filename):
        raise invalid(f"model file name {filename!r} must be a relative POSIX path without control characters")
    parts = filename.split("/")
    if any(p in ("", ".", "..") or len(p.encode()) > 255 for p in parts):
        raise invalid(f"model file name {filename!r} has an empty, '.', '..' or over-long path segment")
    return PurePosixPath(*parts)


def attachment_name(filename: str, field: str) -> str:
    """The base name of an attachment's client file name if it is a plain, safe name; else ``<field>.json``.

    Kept so the stored attachment shows the name the submitter knows; it never chooses a folder.
    """
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    safe = base not in ("", ".", "..") and len(base.encode()) <= 255 and all(32 <= ord(c) != 127 for c in base)
    return base if safe else f"{field}.json"


class _Part:
    """The part being received: its field and, for a file, the open file and pending bytes."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.field = ""
        self.file: IO[bytes] | None = None
        self.text = bytearray()
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.ended = False


class UploadReceiver:
    """Parses one multipart body into ``folder``; :meth:`receive` returns the :class:`Upload`."""

    def __init__(self, folder: Path, model_name: str, limits: Limits) -> None:
        self.folder = folder
        self.limits = limits
        self.model_root = folder / "model" / model_name
        self.attachments = folder / "attachments"
        self.model_root.mkdir(parents=True)
        self.attachments.mkdir()
        self.members: dict[PurePosixPath, Path] = {}
        self.files: dict[str, list[Path]] = {name: [] for name in FILE_FIELDS}
        self.texts: dict[str, str] = {}
        self._part = _Part()
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._ready: list[_Part] = []  # parts with bytes to write or to close, in order
        self._opened: list[IO[bytes]] = []
        self._folders: set[PurePosixPath] = set()  # every folder implied by the model paths so far
        self._file_count = 0
        self._complete = False

    async def receive(self, content_type: str, stream: AsyncIterator[bytes]) -> Upload:
        """Parse the body; files are written as data arrives.

        Raises:
            ApiError: not multipart, malformed, an unknown or repeated field, a bad model path, no model.
        """
        kind, options = parse_options_header(content_type)
        if kind != b"multipart/form-data" or b"boundary" not in options:
            raise ApiError(415, "unsupported_media_type", "upload the model as multipart/form-data")
        parser = python_multipart.MultipartParser(
            options[b"boundary"],
            {
                "on_part_begin": self._on_part_begin,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_end": self._on_end,
            },
        )
        try:
            async for chunk in stream:
                parser.write(chunk)
                if self._ready:
                    await run_in_threadpool(self._flush)
            parser.finalize()
            if self._ready:
                await run_in_threadpool(self._flush)
        except FormParserError as exc:
            raise invalid(f"malformed multipart body: {exc}") from None
        finally:
            await run_in_threadpool(self._close_all)
        if not self._complete:
            raise invalid("truncated multipart body: the closing boundary is missing")
        return self._result()

    # --- parser callbacks (synchronous: part data is only queued here, the worker thread writes it) ---------

    def _on_part_begin(self) -> None:
        self._part = _Part()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._part.headers.append((bytes(self._header_name).lower(), bytes(self._header_value)))
        self._header_name.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        disposition = next((v for k, v in self._part.headers if k == b"content-disposition"), b"")
        _, options = parse_options_header(disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        self._part.field = name
        if b"filename" in options:
            if name not in FILE_FIELDS:
                raise invalid(f"unknown file field {name!r} (expected: {', '.join(FILE_FIELDS)})")
            self._file_count += 1
            if self._file_count > self.limits.max_upload_files:
                raise invalid(f"too many files: the limit is {self.limits.max_upload_files} per upload")
            filename = options[b"filename"].decode("utf-8", "replace")
            self._part.file = self._open(name, filename)
        elif name not in TEXT_FIELDS:
            raise invalid(
                f"unknown field {name!r} (expected files {', '.join(FILE_FIELDS)}; text {', '.join(TEXT_FIELDS)})"
            )
        elif name in self.texts:
            raise invalid(f"field {name!r} given twice")

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if part.file is None:
            if len(part.text) + end - start > self.limits.max_field_bytes:
                raise invalid(f"field {part.field!r} is longer than {self.limits.max_field_bytes} bytes")
            part.text += data[start:end]
            return
        part.pending.append(data[start:end])
        part.pending_size += end - start
        if part.pending_size >= _FLUSH_AT and part not in self._ready:
            self._ready.append(part)

    def _on_part_end(self) -> None:
        part = self._part
        part.ended = True
        if part.file is None:
            try:
                self.texts[part.field] = part.text.decode("utf-8")
            except UnicodeDecodeError:
                raise invalid(f"field {part.field!r} is not UTF-8 text") from None
        elif part not in self._ready:
            self._ready.append(part)  # flushed and closed at the next flush

    def _on_end(self) -> None:
        self._complete = True

    # --- files ----------------------------------------------------------------------------------------------

    def _open(self, field: str, filename: str) -> IO[bytes]:
        if field == "model":
            member = model_member(filename)
            if member in self.members:
                raise invalid(f"model file {filename!r} sent twice")
            clash = member in self._folders or any(parent in self.members for parent in member.parents)
            if clash:
                raise invalid(f"model file {filename!r} clashes with another part (a path is a file or a folder)")
            path = self.model_root.joinpath(*member.parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.members[member] = path
            self._folders.update(member.parents)
        else:
            if field in _SINGLE and self.files[field]:
                raise invalid(f"at most one {field} per upload")
            folder = self.attachments / f"{field}-{len(self.files[field]) + 1}"
            folder.mkdir()
            path = folder / attachment_name(filename, field)
        self.files[field].append(path)
        file = os.fdopen(os.open(path, _OPEN, 0o600), "wb")
        self._opened.append(file)
        return file

    def _flush(self) -> None:
        ready, self._ready = self._ready, []
        for part in ready:
            if not (part.file is not None):
                raise RuntimeError("internal invariant broken: part.file is not None")
            for piece in part.pending:
                part.file.write(piece)
            part.pending.clear()
            part.pending_size = 0
            if part.ended:
                part.file.close()

    def _close_all(self) -> None:
        for file in self._opened:
            file.close()

    def _result(self) -> Upload:
        if not self.members:
            raise invalid("no model file: send the model as one or more 'model' file parts")
        single = len(self.members) == 1 and len(next(iter(self.members)).parts) == 1
        model_path = next(iter(self.members.values())) if single else self.model_root
        signature = self.files["signature"]
        record = self.files["training_record"]
        return Upload(
            model_path=model_path,
            signature=signature[0] if signature else None,
            dataset_manifests=tuple(self.files["dataset_manifest"]),
            training_record=record[0] if record else None,
            framework=self.texts.get("framework") or None,
            description=self.texts.get("description", ""),
        )
