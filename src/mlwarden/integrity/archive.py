r"""Encrypted archives for retired model versions: a tar stream sealed to a custodian's X25519 public key.

Why this construction: the registry host must be able to *write* an archive but not read it back (the point of
retiring is that the bytes leave service), so the archive is encrypted to a recipient public key whose private
half the custodian keeps elsewhere. A fresh 256-bit data key is wrapped with HPKE (RFC 9180, base mode,
DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM, from ``cryptography``); the tar stream is then sealed in
fixed-size AES-256-GCM chunks following the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015): the
nonce is ``prefix(7) ‖ counter(4, big-endian) ‖ last(1)``, so reordered, dropped, duplicated or truncated chunks
fail authentication, and the header is bound to every chunk as associated data. Nothing is ever held whole in
memory: a 10 GiB model is archived with one chunk in flight.

File layout::

    b"MLWARC1\n" ‖ u32 header length ‖ header (canonical JSON) ‖ chunk₀ ‖ … ‖ chunkₙ (the last one flagged)
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import secrets
import struct
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from mlwarden.core.errors import MlwardenError

MAGIC = b"MLWARC1\n"
CHUNK_SIZE = 1 << 20
_TAG = 16
_MAX_HEADER = 64 * 1024
_SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)
_INFO = b"mlwarden archive v1"


class ArchiveError(MlwardenError):
    """The archive cannot be written or read: bad key, wrong recipient, truncated or tampered data."""


@dataclass(frozen=True)
class ArchivedItem:
    """One file inside an archive: its name in the tar, size and SHA-256 of its plaintext bytes."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ArchiveSummary:
    """What :func:`write_archive` produced: the archive file, its own digest, and what went into it."""

    path: Path
    sha256: str
    size: int
    recipient: str
    items: tuple[ArchivedItem, ...]


def generate_recipient(private_path: Path, public_path: Path) -> str:
    """Create an X25519 custodian key pair (private key 0600, never overwritten); returns the key id."""
    for path in (private_path, public_path):
        if path.exists():
            raise ArchiveError(f"{path} already exists; refusing to overwrite a key")
    key = X25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public = key.public_key()
    public_path.write_bytes(
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return key_id(public)


def key_id(public: X25519PublicKey) -> str:
    """A short, stable name for a recipient key: SHA-256 of its raw bytes, first 16 hex digits."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_recipient(path: Path) -> X25519PublicKey:
    """Read a custodian's X25519 public key (PEM)."""
    key = _load(path, private=False)
    if not isinstance(key, X25519PublicKey):
        raise ArchiveError(f"{path} is not an X25519 public key (archives are sealed to X25519 keys)")
    return key


def load_identity(path: Path) -> X25519PrivateKey:
    """Read a custodian's X25519 private key (PEM)."""
    key = _load(path, private=True)
    if not isinstance(key, X25519PrivateKey):
        raise ArchiveError(f"{path} is not an X25519 private key")
    return key


def write_archive(out_path: Path, members: Mapping[str, Path], recipient: X25519PublicKey) -> ArchiveSummary:
    """Tar ``members`` (name in the archive -> file) into ``out_path``, sealed to ``recipient``.

    The archive is written to a temporary name and renamed into place only when complete, so a failure never
    leaves a half archive that looks whole.
    """
    if out_path.exists():
        raise ArchiveError(f"{out_path} already exists")
    data_key = AESGCM.generate_key(bit_length=256)
    header = _canonical(
        {
            "version": 1,
            "suite": "HPKE-base X25519/HKDF-SHA256/AES-256-GCM; STREAM AES-256-GCM",
            "recipient": key_id(recipient),
            "wrapped_key": base64.b64encode(_SUITE.encrypt(data_key, recipient, info=_INFO)).decode(),
            "nonce_prefix": base64.b64encode(secrets.token_bytes(7)).decode(),
            "chunk_size": CHUNK_SIZE,
        }
    )
    tmp = out_path.with_name(f".{out_path.name}.partial")
    items: list[ArchivedItem] = []
    try:
        with tmp.open("wb") as raw:
            raw.write(MAGIC + struct.pack(">I", len(header)) + header)
            sealer = _Sealer(raw, data_key, header)
            with tarfile.open(fileobj=sealer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for name, path in sorted(members.items()):
                    items.append(_add(tar, name, path))
            sealer.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out_path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ArchiveError(f"cannot write archive {out_path}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    digest, size = _file_sha256(out_path)
    return ArchiveSummary(out_path, digest, size, key_id(recipient), tuple(items))


def read_archive(path: Path, identity: X25519PrivateKey) -> Iterator[tuple[str, bytes]]:
    """Yield ``(name, content)`` for each member, authenticating every chunk (for small archives and tests)."""
    with path.open("rb") as raw, tarfile.open(fileobj=_opener(raw, identity, path), mode="r|") as tar:
        for member in tar:
            handle = tar.extractfile(member)
            if handle is not None:
                yield member.name, handle.read()


def extract_archive(path: Path, identity: X25519PrivateKey, destination: Path) -> list[Path]:
    """Decrypt and unpack ``path`` into ``destination`` (tar's "data" filter: no links out, no devices)."""
    destination.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with path.open("rb") as raw, tarfile.open(fileobj=_opener(raw, identity, path), mode="r|") as tar:
        for member in tar:
            try:
                tar.extract(member, destination, filter="data")
            except tarfile.FilterError as exc:
                raise ArchiveError(f"{path}: refusing member {member.name!r}: {exc}") from None
            written.append(destination / member.name)
    return written


def _opener(raw: IO[bytes], identity: X25519PrivateKey, path: Path) -> _Opener:
    if raw.read(len(MAGIC)) != MAGIC:
        raise ArchiveError(f"{path} is not an mlwarden archive")
    length_bytes = raw.read(4)
    if len(length_bytes) != 4 or not 0 < (length := struct.unpack(">I", length_bytes)[0]) <= _MAX_HEADER:
        raise ArchiveError(f"{path}: archive header is truncated or too large")
    header = raw.read(length)
    try:
        fields = json.loads(header)
        wrapped = base64.b64decode(fields["wrapped_key"], validate=True)
        chunk_size = int(fields["chunk_size"])
        prefix = base64.b64decode(fields["nonce_prefix"], validate=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise ArchiveError(f"{path}: archive header is malformed ({exc})") from None
    if fields.get("version") != 1 or len(prefix) != 7 or not 0 < chunk_size <= 64 * CHUNK_SIZE:
        raise ArchiveError(f"{path}: unsupported archive header")
    mine = key_id(identity.public_key())
    if fields.get("recipient") != mine:
        raise ArchiveError(f"{path} is sealed to key {fields.get('recipient')}, not to this key ({mine})")
    try:
        data_key = _SUITE.decrypt(wrapped, identity, info=_INFO)
    except (InvalidTag, ValueError):
        raise ArchiveError(f"{path}: the data key does not open with this private key") from None
    return _Opener(raw, data_key, header, prefix, chunk_size, path)


class _Sealer(io.RawIOBase):
    """Write-only stream: buffers plaintext and emits sealed chunks; :meth:`close` seals the final one."""

    def __init__(self, out: IO[bytes], key: bytes, header: bytes) -> None:
        self._out, self._aead, self._aad = out, AESGCM(key), header
        self._prefix = base64.b64decode(json.loads(header)["nonce_prefix"])
        self._buffer = bytearray()
        self._counter = 0
        self._sealed = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._buffer += view
        while len(self._buffer) > CHUNK_SIZE:  # keep >= 1 byte back: the last chunk must carry the flag
            self._emit(bytes(self._buffer[:CHUNK_SIZE]), last=False)
            del self._buffer[:CHUNK_SIZE]
        return len(view)

    def close(self) -> None:
        if not self._sealed:
            self._sealed = True
            self._emit(bytes(self._buffer), last=True)
            self._buffer.clear()
        super().close()

    def _emit(self, chunk: bytes, *, last: bool) -> None:
        self._out.write(self._aead.encrypt(_nonce(self._prefix, self._counter, last), chunk, self._aad))
        self._counter += 1


class _Opener(io.RawIOBase):
    """Read-only stream over the sealed chunks; raises :class:`ArchiveError` on any tampering or truncation."""

    def __init__(self, raw: IO[bytes], key: bytes, header: bytes, prefix: bytes, chunk_size: int, path: Path) -> None:
        self._raw, self._aead, self._aad, self._prefix = raw, AESGCM(key), header, prefix
        self._sealed_size, self._path = chunk_size + _TAG, path
        self._counter = 0
        self._plain = b""
        self._offset = 0
        self._done = False
        self._pending = raw.read(self._sealed_size)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self._offset >= len(self._plain) and not self._done:
            self._next_chunk()
        n = min(len(buffer), len(self._plain) - self._offset)
        buffer[:n] = self._plain[self._offset : self._offset + n]
        self._offset += n
        return n

    def _next_chunk(self) -> None:
        sealed, following = self._pending, self._raw.read(self._sealed_size)
        last = not following
        if len(sealed) < _TAG:
            raise ArchiveError(f"{self._path} is truncated (chunk {self._counter} missing)")
        try:
            self._plain = self._aead.decrypt(_nonce(self._prefix, self._counter, last), sealed, self._aad)
            self._offset = 0
        except InvalidTag:
            what = "truncated" if last else "tampered with"
            raise ArchiveError(f"{self._path} is {what} (chunk {self._counter} fails authentication)") from None
        self._counter += 1
        self._pending = following
        self._done = last


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    if counter >= 1 << 32:
        raise ArchiveError("archive too large for one STREAM (2^32 chunks)")
    return prefix + struct.pack(">I", counter) + (b"\x01" if last else b"\x00")


def _add(tar: tarfile.TarFile, name: str, path: Path) -> ArchivedItem:
    info = tar.gettarinfo(str(path), arcname=name)
    if not info.isfile():
        raise ArchiveError(f"{path} is not a regular file")
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        tar.addfile(info, _Hashing(handle, digest))
    return ArchivedItem(name, info.size, digest.hexdigest())


class _Hashing:
    """File wrapper hashing what tar reads, so each file is read once."""

    def __init__(self, handle: IO[bytes], digest: Any) -> None:
        self._handle, self._digest = handle, digest

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._digest.update(data)
        return data


def _file_sha256(path: Path) -> tuple[str, int]:
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256")
    return digest.hexdigest(), path.stat().st_size


def _canonical(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _load(path: Path, *, private: bool) -> Any:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ArchiveError(f"cannot read key {path}: {exc.strerror or exc}") from None
    try:
        if private:
            return serialization.load_pem_private_key(data, password=None)
        return serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ArchiveError(f"{path} is not a usable PEM key: {exc}") from None
