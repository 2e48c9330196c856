"""Streaming readers: CSV, Parquet, JSON Lines, NPY/NPZ and image folders as chunks of one normalised shape.

Every check sees the same thing whatever the format: pandas DataFrames of at most ``chunk_rows`` rows in file
order, numeric columns as float64 and every other column as text (missing values as ``""``). Column kinds are
decided once, from the first :data:`SCHEMA_ROWS` rows read on their own, so the chunks — and therefore every
result — do not depend on the chunk size. CSV is read with pandas' chunked reader, Parquet one record batch at a
time with pyarrow, NPY memory-mapped; nothing reads a whole file into memory except NPZ (zip members have no
random access) and image folders (one image at a time, downsampled).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlwarden.datacheck.model import ColumnInfo, DataCheckError

SCHEMA_ROWS = 10_000
#: Integers at least this large are identifiers (account, phone or card numbers), not measurements.
IDENTIFIER_MIN = 10**8
#: String columns with at most this many distinct values (in the schema sample) are categorical features.
MAX_CATEGORIES = 50
FORMATS = ("csv", "parquet", "jsonl", "npy", "npz", "images")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def infer_kinds(sample: pd.DataFrame, label: str | None) -> tuple[ColumnInfo, ...]:
    """Decide each column's kind from a sample (see the module docstring)."""
    kinds = []
    for name in sample.columns:
        col = sample[name]
        if name == label:
            kind = "label"
        elif pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col):
            values = pd.to_numeric(col, errors="coerce").dropna()
            integral = bool(len(values)) and bool((values == np.round(values)).all())
            kind = "identifier" if integral and float(values.abs().max()) >= IDENTIFIER_MIN else "numeric"
        else:
            text = col.dropna().astype(str)
            spaced = float(text.str.contains(" ", regex=False).mean()) if len(text) else 0.0
            if spaced > 0.5 and float(text.str.len().mean()) >= 20:
                kind = "text"
            elif text.nunique() <= MAX_CATEGORIES:
                kind = "categorical"
            else:
                kind = "identifier"
        kinds.append(ColumnInfo(str(name), kind))
    return tuple(kinds)


def normalise(frame: pd.DataFrame, columns: Sequence[ColumnInfo]) -> pd.DataFrame:
    """Numeric columns to float64, every other column to text with ``""`` for missing values."""
    out = {}
    for c in columns:
        col = frame[c.name]
        if c.kind == "numeric":
            out[c.name] = pd.to_numeric(col, errors="coerce").astype("float64")
        elif pd.api.types.is_float_dtype(col):  # 4111111111111111.0 → "4111111111111111"
            out[c.name] = col.map(_float_text).astype(str)
        elif pd.api.types.is_integer_dtype(col) or pd.api.types.is_bool_dtype(col):
            out[c.name] = col.astype(str)
        elif col.dtype == object:
            out[c.name] = col.map(_cell_text).astype(str)
        else:  # pandas' string dtypes
            out[c.name] = col.fillna("").astype(str)
    return pd.DataFrame(out, index=frame.index)


def _float_text(value: float) -> str:
    if np.isnan(value):
        return ""
    return str(int(value)) if float(value).is_integer() else str(value)


def _cell_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


class TableSource(ABC):
    """A dataset read as normalised chunks. Subclasses implement :meth:`_sample` and :meth:`_raw_chunks`."""

    format: str

    def __init__(self, path: Path, label: str | None) -> None:
        self.path = path
        self.label = label
        sample = self._sample(SCHEMA_ROWS)
        if label is not None and label not in sample.columns:
            raise DataCheckError(f"--label: no column {label!r} in {path} (columns: {_names(sample.columns)})")
        self.columns = infer_kinds(sample, label)
        self.scales: dict[str, float] = {}  # numeric columns' standard deviations in the sample (1 when 0 or unknown)
        for c in self.columns:
            if c.kind == "numeric":
                std = float(pd.to_numeric(sample[c.name], errors="coerce").std())
                self.scales[c.name] = std if np.isfinite(std) and std > 0 else 1.0

    def require(self, column: str, option: str) -> None:
        """Raise a one-line error when ``column`` is not in the data."""
        if column not in {c.name for c in self.columns}:
            raise DataCheckError(f"{option}: no column {column!r} in {self.path} (columns: {_names(self.names)})")

    @property
    def names(self) -> list[str]:
        """Column names in file order."""
        return [c.name for c in self.columns]

    def chunks(self, chunk_rows: int) -> Iterator[pd.DataFrame]:
        """Normalised chunks of at most ``chunk_rows`` rows, indexed by row number in the file."""
        start = 0
        try:
            for raw in self._raw_chunks(chunk_rows):
                frame = normalise(raw.reset_index(drop=True), self.columns)
                frame.index = pd.RangeIndex(start, start + len(frame))
                start += len(frame)
                yield frame
        except DataCheckError:
            raise
        except (ValueError, OSError, KeyError, UnicodeDecodeError) as exc:
            raise DataCheckError(f"{self.path}: not a readable {self.format} file: {_one_line(exc)}") from None

    @abstractmethod
    def _sample(self, rows: int) -> pd.DataFrame:
        """The first ``rows`` rows, as the format's reader types them."""

    @abstractmethod
    def _raw_chunks(self, chunk_rows: int) -> Iterator[pd.DataFrame]:
        """Chunks as the format's reader types them."""


def _names(columns: Any) -> str:
    names = [str(c) for c in columns]
    return ", ".join(names[:20]) + (" …" if len(names) > 20 else "")


class CsvSource(TableSource):
    """CSV through pandas' chunked C reader; text columns are read as text (``"007"`` stays ``"007"``)."""

    format = "csv"

    def _sample(self, rows: int) -> pd.DataFrame:
        return pd.read_csv(self.path, nrows=rows)

    def _raw_chunks(self, chunk_rows: int) -> Iterator[pd.DataFrame]:
        dtype = {c.name: str for c in self.columns if c.kind != "numeric"}
        yield from pd.read_csv(self.path, chunksize=chunk_rows, dtype=dtype, keep_default_na=False, na_values=[""])


class ParquetSource(TableSource):
    """Parquet one record batch at a time (pyarrow ``iter_batches``)."""

    format = "parquet"

    def _file(self) -> Any:
        import pyarrow.parquet as pq

        return pq.ParquetFile(self.path)

    def _sample(self, rows: int) -> pd.DataFrame:
        batch = next(iter(self._file().iter_batches(batch_size=rows)), None)
        if batch is None:
            raise DataCheckError(f"{self.path}: the Parquet file has no rows")
        return batch.to_pandas()

    def _raw_chunks(self, chunk_rows: int) -> Iterator[pd.DataFrame]:
        for batch in self._file().iter_batches(batch_size=chunk_rows):
            yield batch.to_pandas()


class JsonLinesSource(TableSource):
    """JSON Lines: one object per line; nested values become their JSON text."""

    format = "jsonl"

    def _reader(self, chunk_rows: int, nrows: int | None = None) -> Any:
        return pd.read_json(self.path, lines=True, chunksize=chunk_rows, nrows=nrows, dtype=False, encoding="utf-8")

    def _sample(self, rows: int) -> pd.DataFrame:
        with self._reader(rows, nrows=rows) as reader:
            frame = next(iter(reader), None)
        if frame is None or frame.empty:
            raise DataCheckError(f"{self.path}: the JSON Lines file has no rows")
        return frame

    def _raw_chunks(self, chunk_rows: int) -> Iterator[pd.DataFrame]:
        with self._reader(chunk_rows) as reader:
            yield from reader


class ArraySource(TableSource):
    """NPY (memory-mapped) or NPZ (features in the one 2-D array, labels in the array named by ``--label``).

    Columns are named ``"0"``, ``"1"``, …; with an NPY file, ``--label`` names a column (``--label 20``).
    Object arrays are refused: reading them would unpickle.
    """

    def __init__(self, path: Path, label: str | None) -> None:
        self.format = path.suffix.lower().lstrip(".")
        try:
            self.features, self.labels = self._arrays(path, label)
        except (ValueError, OSError, EOFError) as exc:
            raise DataCheckError(f"{path}: not a readable {self.format} file: {_one_line(exc)}") from None
        super().__init__(path, label if self.format == "npy" else ("label" if label else None))

    def _arrays(self, path: Path, label: str | None) -> tuple[np.ndarray, np.ndarray | None]:
        if self.format == "npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            if array.ndim != 2:
                raise DataCheckError(f"{path}: expected a 2-D array (rows × columns), got shape {array.shape}")
            return array, None
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        if label is not None and label not in arrays:
            raise DataCheckError(f"--label: no array {label!r} in {path} (arrays: {_names(arrays)})")
        two_d = [name for name, a in arrays.items() if a.ndim == 2]
        if len(two_d) != 1:
            raise DataCheckError(f"{path}: expected exactly one 2-D feature array, found {len(two_d)}")
        features = arrays[two_d[0]]
        labels = arrays[label] if label is not None else None
        if labels is not None and (labels.ndim != 1 or len(labels) != len(features)):
            raise DataCheckError(f"--label: array {label!r} must be 1-D with {len(features)} entries")
        return features, labels

    def _frame(self, start: int, stop: int) -> pd.DataFrame:
        block = np.asarray(self.features[start:stop])
        frame = pd.DataFrame(block, columns=[str(i) for i in range(block.shape[1])])
        if self.labels is not None:
            frame["label"] = self.labels[start:stop]
        return frame

    def _sample(self, rows: int) -> pd.DataFrame:
        return self._frame(0, rows)

    def _raw_chunks(self, chunk_rows: int) -> Iterator[pd.DataFrame]:
        for start in range(0, len(self.features), chunk_rows):
            yield self._frame(start, start + chunk_rows)


def open_source(path: Path | str, label: str | None = None, image_size: int = 16) -> TableSource:
    """Open ``path`` by its extension (a folder is an image folder: one sub-folder per class).

    Raises:
        DataCheckError: missing path, unknown extension, unreadable or corrupt file, unknown ``label``.
    """
    path = Path(path)
    if not path.exists():
        raise DataCheckError(f"{path} does not exist")
    if path.is_dir():
        from mlwarden.datacheck.images import ImageFolderSource

        return ImageFolderSource(path, label, image_size)
    suffix = path.suffix.lower()
    sources: dict[str, type[TableSource]] = {
        ".csv": CsvSource,
        ".parquet": ParquetSource,
        ".pq": ParquetSource,
        ".jsonl": JsonLinesSource,
        ".ndjson": JsonLinesSource,
        ".npy": ArraySource,
        ".npz": ArraySource,
    }
    if suffix not in sources:
        raise DataCheckError(f"{path}: unknown data format {suffix or '(no extension)'}; expected one of {FORMATS}")
    try:
        return sources[suffix](path, label)
    except DataCheckError:
        raise
    except ImportError as exc:
        raise DataCheckError(
            f"{path}: reading {suffix} needs an optional package ({exc.name}): pip install 'mlwarden[assess]'"
        ) from None
    except Exception as exc:  # noqa: BLE001 - every reader's parse error becomes one line, never a traceback
        raise DataCheckError(f"{path}: not a readable {suffix.lstrip('.')} file: {_one_line(exc)}") from None
