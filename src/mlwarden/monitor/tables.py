"""Tables for batch drift, read with pyarrow: numeric columns as float64 arrays, the rest as strings.

Kept apart from the drift tests (which import scipy) so the CLI can read both tables while scipy imports on
another thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mlwarden.core.errors import UsageError

MISSING = "<missing>"
#: Most rows read from either table (a clear error beyond; ``--max-rows`` raises it).
MAX_ROWS = 10_000_000


@dataclass(frozen=True, slots=True)
class Table:
    """A table read for drift: numeric columns as float64 (NaN for missing), categorical ones as strings."""

    path: str
    rows: int
    numeric: dict[str, NDArray[np.float64]]
    categorical: dict[str, NDArray[np.str_]]


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
            table = _read_arrow(path, suffix)
    except UsageError:
        raise
    except (OSError, ValueError) as exc:
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
        )
    return table


def _read_arrow(path: Path, suffix: str) -> Table:
    import pyarrow as pa

    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        data = pq.read_table(path)
    elif suffix in (".jsonl", ".ndjson"):
        import pyarrow.json as pj

        data = pj.read_json(path)
    else:
        import pyarrow.csv as pcsv

        data = pcsv.read_csv(path)
    numeric: dict[str, NDArray[np.float64]] = {}
    categorical: dict[str, NDArray[np.str_]] = {}
    for name, column in zip(data.column_names, data.columns, strict=True):
        kind = column.type
        if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
            floats = column.cast(pa.float64()).combine_chunks()
            # Without nulls: a zero-copy view. pyarrow imports pandas for null conversion (and for Python scalars),
            # which costs a third of a second: only tables with missing values pay it.
            numeric[name] = _as_numpy(floats, np.float64)
        else:
            # Dictionary-encoded: the distinct values become Python strings once, the rows stay integer codes.
            encoded = column.cast(pa.string()).combine_chunks().dictionary_encode()
            levels = np.asarray([*encoded.dictionary.to_pylist(), MISSING], dtype=str)
            codes = _as_numpy(encoded.indices, np.dtype(f"int{encoded.indices.type.bit_width}"))
            if encoded.indices.null_count:  # nulls came back as NaN: they are the last level, MISSING
                codes = np.where(np.isnan(codes), len(levels) - 1, codes).astype(np.int64)
            categorical[name] = levels[codes]
    return Table(str(path), data.num_rows, numeric, categorical)


def _as_numpy(array: Any, dtype: np.dtype[Any] | type) -> NDArray[Any]:
    """A pyarrow array's values as numpy: a view of its data buffer when it has no nulls.

    pyarrow's own ``to_numpy`` imports pandas (a third of a second) even for a plain float column; only arrays with
    nulls take that path here (nulls come back as NaN).
    """
    if array.null_count:
        return np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.float64)
    data = array.buffers()[1]
    return np.frombuffer(data, dtype=dtype, count=len(array) + array.offset)[array.offset :]
