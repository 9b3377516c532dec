"""Result tables: rows written as CSV (and Parquet), atomically through `storage`.

Every table the jobs leave behind goes through `write_rows`: ``eval.csv``, ``history.csv``, a
separation's ``_results``, a sweep's ``results``. The CSV is plain (``,``, quoted only where a cell
needs it, ``\\n`` line ends); an absent value is an empty cell. A text cell that a spreadsheet
would run as a formula (``=``, ``+``, ``-``, ``@``, tab or CR first: an input named
``=HYPERLINK(...).wav``) gets a leading ``'`` in the CSV; Parquet keeps every value as it is.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from auralflow_dist import storage

# What spreadsheets (Excel, LibreOffice, Google Sheets) take as the start of a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


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
    (``nan``, ``inf``, ``1e-07``). Text that would start a formula is defused with a leading
    ``'`` in the CSV only; numbers are never touched (``-1.5`` stays). Parquet keeps the values'
    own types.
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
    text = _Lines()
    writer = csv.DictWriter(text, fieldnames=names, lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v, float_format) for k, v in row.items()})
    storage.write_bytes(csv_url, "".join(text.lines).encode())


class _Lines:
    """The csv writer's rows with ``\\n`` line ends.

    The writer is told ``\\r\\n`` because it quotes only cells holding a character of its line
    terminator: with ``\\n`` alone, a cell holding a CR went out bare and split its row in two.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, row: str) -> None:
        self.lines.append(row.removesuffix("\r\n") + "\n")


def _cell(value: Any, float_format: str | None) -> Any:
    if isinstance(value, str):
        return "'" + value if value.startswith(_FORMULA_START) else value
    if float_format is not None and isinstance(value, float) and math.isfinite(value):
        return format(value, float_format)
    return value
