"""Integrity: per-file digests of models, DSSE/in-toto signatures compatible with OpenSSF model_signing."""

from mlwarden.integrity.errors import KeyFileError, ModelPathError, VerificationError
from mlwarden.integrity.hashing import Difference, FileDigest, ModelManifest, hash_model

__all__ = [
    "Difference",
    "FileDigest",
    "KeyFileError",
    "ModelManifest",
    "ModelPathError",
    "VerificationError",
    "hash_model",
]
