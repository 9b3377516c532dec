"""Result tables: rows written as CSV (and Parquet), atomically through `storage`.

Every table the jobs leave behind goes through `write_rows`: ``eval.csv``, ``history.csv``, a
separation's ``_results``, a sweep's ``results``. The CSV is plain (``,``, quoted only where a cell
needs it, ``\\n`` line ends); an absent value is an empty cell.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from auralflow_dist import storage


def write_rows(
    csv_url: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    columns: Sequence[str] | None = None,
    float_format: str | None = None,
    parquet_url: str | None = None,
) -> None:
    """Write ``rows`` to ``csv_url`` and, given ``parquet_url``, as Parquet there too.

    ``columns`` defaults to every key of the rows, in the order they first appear; a row lacking
    one leaves its cell empty. ``float_format`` (e.g. ``".4f"``) formats finite floats in the
    CSV; other floats, and every float without it, are written as Python spells them
    (``nan``, ``inf``, ``1e-07``). Parquet keeps the values' own types.
    """
    names = (
        list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    )
    if parquet_url is not None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({n: [r.get(n) for r in rows] for n in names})
        buf = io.BytesIO()
        pq.write_table(table, buf)
        storage.write_bytes(parquet_url, buf.getvalue())
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v, float_format) for k, v in row.items()})
    storage.write_bytes(csv_url, text.getvalue().encode())


def _cell(value: Any, float_format: str | None) -> Any:
    if float_format is not None and isinstance(value, float) and math.isfinite(value):
        return format(value, float_format)
    return value
