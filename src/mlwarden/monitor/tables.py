"""Tables for batch drift, read with pyarrow: numeric columns as float64 arrays, the rest as strings.

Kept apart from the drift tests so the CLI can read both tables (pyarrow releases the interpreter lock) while the
drift modules import on another thread. Neither ``pyarrow.compute`` (~70 ms to import) nor pandas (~0.3 s) is
needed for CSV and Parquet tables of numbers and strings, with or without missing values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mlwarden.core.errors import UsageError

MISSING = "<missing>"
#: Most rows read from either table (a clear error beyond; ``--max-rows`` raises it).
MAX_ROWS = 10_000_000
#: A CSV string column with more distinct values than this is read as plain strings and encoded afterwards.
AUTO_DICT_MAX = 1_000_000


@dataclass(frozen=True, slots=True)
class Table:
    """A table read for drift: numeric columns as float64 (NaN for missing), categorical ones as strings.

    ``codes`` holds, for categorical columns read through a dictionary, its levels and each row's index into them
    (``categorical[name]`` is ``levels[codes]``): counting integer codes is ~20x faster than counting strings.
    """

    path: str
    rows: int
    numeric: dict[str, NDArray[np.float64]]
    categorical: dict[str, NDArray[np.str_]]
    codes: dict[str, tuple[NDArray[np.str_], NDArray[np.intp]]] = field(default_factory=dict)

    def value_counts(self, name: str) -> dict[str, int]:
        """How many rows have each value of a categorical column (values that occur only)."""
        if name in self.codes:
            levels, codes = self.codes[name]
            counts = np.bincount(codes, minlength=levels.size)
            out: dict[str, int] = {}
            for i in np.flatnonzero(counts).tolist():
                value = str(levels[i])
                out[value] = out.get(value, 0) + int(counts[i])  # a level equal to MISSING adds to it
            return out
        values, counts = np.unique(self.categorical[name], return_counts=True)
        return dict(zip(values.tolist(), counts.tolist(), strict=True))


def read_table(path: Path | str, *, max_rows: int = MAX_ROWS, columns: list[str] | None = None) -> Table:
    """Read CSV, Parquet (``.parquet``/``.pq``), JSON Lines (``.jsonl``/``.ndjson``) or NPY (2-D numeric).

    Raises:
        UsageError: missing, unreadable or empty file, too many rows, unknown columns.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False, mmap_mode="r")
            if arr.ndim != 2 or arr.dtype.kind not in "iuf":
                raise UsageError(f"{path}: an NPY table must be a 2-D numeric array, got {arr.dtype} {arr.shape}")
            numeric = {str(i): np.asarray(arr[:, i], dtype=np.float64) for i in range(arr.shape[1])}
            table = Table(str(path), int(arr.shape[0]), numeric, {})
        else:
            table = _read_arrow(path, suffix, columns)
    except UsageError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"{path}: cannot read it as a table: {str(exc)[:300]}") from None
    if table.rows == 0:
        raise UsageError(f"{path}: the table has no rows")
    if table.rows > max_rows:
        raise UsageError(f"{path}: {table.rows:,} rows is more than --max-rows {max_rows:,}")
    if columns:
        known = set(table.numeric) | set(table.categorical)
        unknown = [c for c in columns if c not in known]
        if unknown:
            raise UsageError(f"{path}: no column(s) {unknown}")
        keep = set(columns)
        table = Table(
            table.path,
            table.rows,
            {k: v for k, v in table.numeric.items() if k in keep},
            {k: v for k, v in table.categorical.items() if k in keep},
            {k: v for k, v in table.codes.items() if k in keep},
        )
    return table


def _read_arrow(path: Path, suffix: str, columns: list[str] | None) -> Table:
    import pyarrow as pa

    data = _read_selected(path, suffix, columns)
    if data is None:  # a requested column does not exist: read all, read_table names the unknown ones
        data = _read_selected(path, suffix, None)
    numeric: dict[str, NDArray[np.float64]] = {}
    categorical: dict[str, NDArray[np.str_]] = {}
    codes: dict[str, tuple[NDArray[np.str_], NDArray[np.intp]]] = {}
    for name, column in zip(data.column_names, data.columns, strict=True):
        kind = column.type
        if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
            numeric[name] = _floats(column.combine_chunks())
        else:
            codes[name] = _encoded(column)
            categorical[name] = codes[name][0][codes[name][1]]
    return Table(str(path), data.num_rows, numeric, categorical, codes)


def _read_selected(path: Path, suffix: str, columns: list[str] | None) -> Any:
    """The pyarrow table of ``path`` (only ``columns`` when given), or None when one of them does not exist.

    CSV strings come dictionary-encoded from the reader itself (``auto_dict_encode``): no per-row Python string and
    no second pass (nor ``pyarrow.compute``, whose import alone costs ~70 ms) to encode them afterwards.
    """
    import pyarrow as pa

    try:
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return pq.read_table(path, columns=columns)
        if suffix in (".jsonl", ".ndjson"):
            import pyarrow.json as pj

            return pj.read_json(path)
        import pyarrow.csv as pcsv

        convert = pcsv.ConvertOptions(
            auto_dict_encode=True, auto_dict_max_cardinality=AUTO_DICT_MAX, include_columns=columns or []
        )
        return pcsv.read_csv(path, convert_options=convert)
    except (pa.ArrowKeyError, pa.ArrowInvalid) as exc:
        if columns and ("include_columns" in str(exc) or "No match for FieldRef" in str(exc)):
            return None
        raise


def _floats(array: Any) -> NDArray[np.float64]:
    """A numeric pyarrow array as float64, NaN for nulls, without pyarrow.compute or pandas.

    pyarrow's own ``to_numpy`` imports pandas (a third of a second) for an array with nulls, and ``cast`` imports
    pyarrow.compute: float64 without nulls is a zero-copy view here, other integer and float types a numpy
    conversion of their data buffer, nulls a NaN written where the validity bitmap says so. Decimals, the one type
    without a numpy equivalent, are cast by pyarrow.
    """
    import pyarrow as pa

    if pa.types.is_decimal(array.type):
        array = array.cast(pa.float64())
    dtype = np.dtype(array.type.to_pandas_dtype())
    values = _buffer_view(array, dtype)
    out = values if dtype == np.float64 and not array.null_count else values.astype(np.float64)
    valid = _valid(array)
    if valid is not None:
        out[~valid] = np.nan
    return out


def _encoded(column: Any) -> tuple[NDArray[np.str_], NDArray[np.intp]]:
    """A non-numeric column as ``(levels, codes)``, nulls as the last level, :data:`MISSING`.

    Each distinct value becomes a Python string once, not once per row.
    """
    import pyarrow as pa

    encoded = column.combine_chunks()  # dictionary chunks with different dictionaries are unified here
    if not pa.types.is_dictionary(encoded.type):  # Parquet/JSON strings, CSV above AUTO_DICT_MAX, booleans, dates
        encoded = encoded.cast(pa.string()).dictionary_encode()
    dictionary = encoded.dictionary
    if not pa.types.is_string(dictionary.type):
        dictionary = dictionary.cast(pa.string())
    levels = np.asarray([*dictionary.to_pylist(), MISSING], dtype=str)
    indices = encoded.indices
    codes = _buffer_view(indices, np.dtype(indices.type.to_pandas_dtype())).astype(np.intp)
    valid = _valid(indices)
    if valid is not None:  # nulls are the last level, MISSING
        codes[~valid] = len(levels) - 1
    return levels, codes


def _buffer_view(array: Any, dtype: np.dtype[Any]) -> NDArray[Any]:
    """The values of a primitive pyarrow array as a numpy view of its data buffer (slots of nulls undefined)."""
    if len(array) == 0:
        return np.empty(0, dtype=dtype)
    data = array.buffers()[1]
    return np.frombuffer(data, dtype=dtype, count=len(array) + array.offset)[array.offset :]


def _valid(array: Any) -> NDArray[np.bool_] | None:
    """Which values of a pyarrow array are not null (from its validity bitmap), or None when none is null."""
    if not array.null_count:
        return None
    bitmap = np.frombuffer(array.buffers()[0], dtype=np.uint8)
    bits = np.unpackbits(bitmap, bitorder="little")
    return bits[array.offset : array.offset + len(array)].astype(bool)
