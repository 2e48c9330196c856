"""Image folders (one sub-folder per class) as a table: path, class label and downsampled grey pixels.

The tabular checks then apply unchanged: duplicates compare the downsampled pixels (resized copies and
re-encodings of one picture become exact duplicates), confident learning and outliers use them as features,
and the PII scan reads the file names. Images are opened one at a time with Pillow, whose decompression-bomb
limit stays on; a file Pillow cannot read stops the check with its name (fail closed, never skipped silently).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from mlwarden.datacheck.model import DataCheckError
from mlwarden.datacheck.readers import TableSource

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def image_files(root: Path) -> list[tuple[Path, str]]:
    """``(file, class)`` for every image under ``root/<class>/``, sorted (the row order of every report)."""
    files = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for file in sorted(folder.rglob("*")):
            if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
                files.append((file, folder.name))
    if not files:
        raise DataCheckError(f"{root}: no images found (expected one sub-folder per class holding image files)")
    return files


def read_image(path: Path, size: int | None, mode: str = "L") -> np.ndarray:
    """The image as float32 in [0, 1], converted to ``mode`` and resized to ``size``×``size`` (None: as is)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            converted = image.convert(mode)
            if size is not None:
                converted = converted.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(converted, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise DataCheckError(f"{path}: not a readable image: {exc}") from None


class ImageFolderSource(TableSource):
    """An image folder as chunks of ``path`` (identifier), ``label`` and ``px0 … px{size²-1}`` (numeric)."""

    format = "images"

    def __init__(self, path: Path, label: str | None, size: int = 16) -> None:
        if label not in (None, "label"):
            raise DataCheckError("--label: an image folder's labels are its sub-folder names (omit --label)")
        self.size = size
        self.files = image_files(path)
        super().__init__(path, "label")

    def _frame(self, start: int, stop: int) -> pd.DataFrame:
        chosen = self.files[start:stop]
        pixels = np.stack([read_image(f, self.size).reshape(-1) for f, _ in chosen]) if chosen else np.empty((0, 0))
        frame = pd.DataFrame(pixels, columns=[f"px{i}" for i in range(self.size * self.size)])
        frame.insert(0, "label", [c for _, c in chosen])
        frame.insert(0, "path", [f.relative_to(self.path).as_posix() for f, _ in chosen])
        return frame

    def _sample(self, rows: int) -> pd.DataFrame:
        return self._frame(0, min(rows, 64))

    def _raw_chunks(self, chunk_rows: int) -> Iterator[pd.DataFrame]:
        for start in range(0, len(self.files), chunk_rows):
            yield self._frame(start, start + chunk_rows)
