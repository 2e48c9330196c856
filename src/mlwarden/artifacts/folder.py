"""The folder around a model file: what a loader resolves the relative names inside the file against.

Some loaders open files that a model names: ONNX external data, the ``auto_map`` modules of a transformers
``config.json``, the arrays of a legacy joblib pickle. The checks for those ask a :class:`Folder`, never the file
system directly, so one rule serves every place a model can live:

* :class:`LocalFolder` looks on disk (symlinks, special files and folders count as escapes, as the loaders follow
  them);
* a remote folder (:mod:`mlwarden.scan.remote_folder`) looks in the listing of the prefix or repository that was
  scanned, or asks the server about one name at a time. It learns only whether a name exists, never its bytes,
  unless a check opens that sibling to analyse it.

Which artifacts have a folder: a whole file (``depth == 0``, or a sibling a check opened, noted
:data:`WHOLE_FILE`) has the folder it sits in. Members and decoded layers inherit the folder of the file they came
from; :func:`file_folder` and :func:`layer_folder` say when a check may use it.
"""

from __future__ import annotations

import os
import re
import stat
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

from mlwarden.artifacts.artifact import HEAD_SIZE

if TYPE_CHECKING:
    from mlwarden.artifacts.artifact import Artifact

#: Note on an artifact that is exactly one file of its folder, opened by a check (a joblib array file).
WHOLE_FILE = "whole-file"
#: Problem text shared by every folder: a name that is a folder or special file is never loadable data.
NOT_REGULAR = "is not a regular file (device, FIFO, socket or directory)"
#: Problem text shared by every folder: nothing with that name beside the model.
NOT_FOUND = "file not found beside the model"


def relative_path_problem(location: str) -> str | None:
    """Why a relative file reference is unsafe whatever the folder holds (absolute, ``..``, NUL), or ``None``."""
    if location.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", location):
        return "absolute path"
    if "\x00" in location:
        return "NUL byte in path"
    if ".." in re.split(r"[\\/]+", location):
        return "'..' component"
    return None


class Folder(ABC):
    """The files beside a model, as the loader that opens them sees them."""

    @abstractmethod
    def problem(self, name: str) -> tuple[str, bool] | None:
        """Why ``name`` is not a regular file in this folder: ``(text, is_escape)``, or ``None`` when it is one.

        ``is_escape`` is true when following the name would leave the folder or open something that is not a
        regular file (a symlink, a device, a folder); false when it is merely missing. Callers check
        :func:`relative_path_problem` first; implementations treat a lexically unsafe name as an escape too.
        """

    @abstractmethod
    def is_file(self, name: str) -> bool:
        """Whether a regular file ``name`` (relative to this folder) exists."""

    @abstractmethod
    def open(self, name: str, chain: tuple[str, ...], depth: int) -> Artifact:
        """The file ``name`` (for which :meth:`problem` is ``None``) as an artifact displayed as ``chain``.

        The artifact is noted :data:`WHOLE_FILE` and has the folder that file sits in.
        """


class LocalFolder(Folder):
    """A folder on disk.

    Args:
        path: the folder.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def problem(self, name: str) -> tuple[str, bool] | None:
        """Resolve ``name`` as the loader would: leaving the folder, symlinks and special files are escapes."""
        lexical = relative_path_problem(name)
        if lexical is not None:
            return lexical, True
        target = self.path / name
        try:
            base_real = self.path.resolve()
            real = target.resolve()
            if real != base_real and base_real not in real.parents:
                return f"resolves outside the model folder to {real}", True
            st = os.lstat(target)
        except FileNotFoundError:
            return NOT_FOUND, False
        except (OSError, RuntimeError) as exc:
            return f"cannot be examined: {exc}", True
        if stat.S_ISLNK(st.st_mode):
            return f"is a symlink to {os.readlink(target)}", True
        if not stat.S_ISREG(st.st_mode):
            return NOT_REGULAR, True
        return None

    def is_file(self, name: str) -> bool:
        """``Path.is_file`` of the name joined to the folder (what an import of the module would find)."""
        return (self.path / name).is_file()

    def open(self, name: str, chain: tuple[str, ...], depth: int) -> Artifact:
        """The file as an artifact that reads it from disk."""
        from mlwarden.artifacts.artifact import Artifact

        path = self.path / name
        with path.open("rb") as fh:
            head = fh.read(HEAD_SIZE)
            size = os.fstat(fh.fileno()).st_size
        return Artifact(
            chain=chain,
            size=size,
            opener=lambda: path.open("rb"),
            head=head,
            fs_path=path,
            depth=depth,
            notes=frozenset({WHOLE_FILE}),
            folder=LocalFolder(path.parent),
        )


def file_folder(artifact: Artifact) -> Folder | None:
    """The folder around ``artifact`` when its bytes are a whole file (not an archive member or a decoded layer)."""
    if artifact.folder is None:
        return None
    if artifact.depth == 0 or WHOLE_FILE in artifact.notes:
        return artifact.folder
    return None


def layer_folder(artifact: Artifact) -> Folder | None:
    """Like :func:`file_folder`, also for the bytes of a file seen through compression layers only (``<gzip>``).

    joblib decompresses a pickle in memory and still resolves the names in it against the file's folder.
    """
    whole = file_folder(artifact)
    if whole is not None or artifact.folder is None:
        return whole
    layers = artifact.chain[1:]
    if layers and all(part.startswith("<") and part.endswith(">") and " " not in part for part in layers):
        return artifact.folder
    return None
