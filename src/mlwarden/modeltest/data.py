"""Test (and training) data as arrays: features ``x``, raw labels ``y``, the sensitive attribute's values.

Tables (CSV, Parquet, JSON Lines, NPY, NPZ) are read with the data checks' readers
(:func:`mlwarden.datacheck.readers.open_source`), so a file is typed the same way by ``data check`` and
``model test``. The features are **every numeric column except the label**, in file order — a numeric sensitive
column stays a feature (the model was usually trained with it), a text one is only the grouping attribute.
Other text, categorical or identifier columns are refused with their names: a model test feeds the model exactly
what it was trained on, and guessing an encoding would test a different model. Missing values are refused too.

Image folders (one sub-folder per class, its name the label) are read at their native size as float32 in
``[0, 1]``, shape ``(channels, height, width)``: one channel when every image is grey (all channels equal),
else three (RGB). All images must share one size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mlwarden.datacheck.model import DataCheckError
from mlwarden.modeltest.model import DataRef, ModelTestError

#: Rows read per chunk from a table.
CHUNK_ROWS = 50_000


@dataclass(frozen=True, slots=True)
class TestData:
    """One dataset as arrays.

    Attributes:
        path: the file or folder.
        x: features, float32: ``(rows, features)`` for tables, ``(rows, channels, height, width)`` for images.
        y: the raw labels (text for tables and image folders), ``None`` without a label column.
        sensitive: the sensitive attribute's values, ``None`` without ``--sensitive``.
        sha256: the data's digest (:func:`mlwarden.integrity.hashing.hash_model`; a folder's manifest digest).
        features: the feature columns' names (``()`` for images).
        image: whether the data is an image folder.
        label: the label column's name.
        sensitive_name: the sensitive column's name.
    """

    __test__ = False

    path: str
    x: np.ndarray
    y: np.ndarray | None
    sensitive: np.ndarray | None
    sha256: str
    features: tuple[str, ...] = ()
    image: bool = False
    label: str | None = None
    sensitive_name: str | None = None

    @property
    def rows(self) -> int:
        """Number of rows (images)."""
        return len(self.x)

    def ref(self) -> DataRef:
        """The report's record of this data."""
        return DataRef(self.path, self.sha256, self.rows, self.label, self.sensitive_name)


def read_data(path: Path | str, label: str | None = None, sensitive: str | None = None) -> TestData:
    """Read a table or an image folder (see the module docstring).

    Raises:
        DataCheckError: missing or unreadable data, unknown column.
        ModelTestError: data a model test cannot use (text features, missing values, images of mixed sizes).
    """
    from mlwarden.integrity.hashing import hash_model

    path = Path(path)
    if not path.exists():
        raise DataCheckError(f"{path} does not exist")
    data = _read_images(path, label, sensitive) if path.is_dir() else _read_table(path, label, sensitive)
    if data.rows == 0:
        raise ModelTestError(f"{path}: no rows")
    digest = hash_model(path).digest
    return TestData(str(path), data.x, data.y, data.sensitive, digest, data.features, data.image, data.label,
                    data.sensitive_name)  # fmt: skip


def _read_table(path: Path, label: str | None, sensitive: str | None) -> TestData:
    from mlwarden.datacheck.readers import open_source

    source = open_source(path, label)
    if sensitive is not None:
        source.require(sensitive, "--sensitive")
    label = source.label
    kinds = {c.name: c.kind for c in source.columns}
    refused = [f"{n} ({k})" for n, k in kinds.items() if k not in ("numeric", "label") and n != sensitive]
    if refused:
        hint = " (is one of them the label? name it with --label)" if label is None else ""
        raise ModelTestError(
            f"{path}: column(s) {', '.join(refused[:10])} are not numeric; model tests feed the model numeric "
            f"features only — encode them as the model expects, or drop them{hint}"
        )
    features = [n for n, k in kinds.items() if k == "numeric"]
    if not features:
        raise ModelTestError(f"{path}: no numeric feature columns")
    frame = pd.concat(list(source.chunks(CHUNK_ROWS)), ignore_index=True)
    x = frame[features].to_numpy(dtype=np.float64)
    missing = np.isnan(x).any(axis=0)
    if missing.any():
        names = ", ".join(n for n, m in zip(features, missing, strict=True) if m)
        raise ModelTestError(f"{path}: missing or non-numeric values in feature column(s) {names}")
    y = frame[label].to_numpy() if label is not None else None
    s = frame[sensitive].to_numpy() if sensitive is not None else None
    return TestData(str(path), x.astype(np.float32), y, s, "", tuple(features), False, label, sensitive)


def _read_images(path: Path, label: str | None, sensitive: str | None) -> TestData:
    from mlwarden.datacheck.images import image_files, read_image

    if label not in (None, "label"):
        raise ModelTestError("--label: an image folder's labels are its sub-folder names (omit --label)")
    if sensitive is not None:
        raise ModelTestError("--sensitive: an image folder has no attribute columns")
    files = image_files(path)
    images: list[np.ndarray] = []
    for file, _ in files:
        image = read_image(file, None, "RGB")
        if images and image.shape != images[0].shape:
            first = files[0][0].relative_to(path)
            raise ModelTestError(
                f"{path}: images must share one size: {first} is {images[0].shape[1]}×{images[0].shape[0]}, "
                f"{file.relative_to(path)} is {image.shape[1]}×{image.shape[0]}"
            )
        images.append(image)
    x = np.stack(images).transpose(0, 3, 1, 2)  # (n, H, W, 3) -> (n, 3, H, W)
    if np.array_equal(x[:, 0], x[:, 1]) and np.array_equal(x[:, 0], x[:, 2]):
        x = x[:, :1]
    y = np.array([c for _, c in files])
    return TestData(str(path), np.ascontiguousarray(x, dtype=np.float32), y, None, "", (), True, "label", None)
