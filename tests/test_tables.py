"""The one table writer: CSV (and Parquet) from rows, atomically through storage."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pyarrow.parquet as pq

from auralflow_dist import tables
from auralflow_dist.separate.results import OK, FileResult, write_table

ROWS = [
    {"track": "b", "score": 1.23456, "n": 3, "ok": True},
    {"track": "a, the second", "error": "no vocals stem"},
    {"track": "median", "score": math.nan, "n": 2, "ok": False},
]


def test_csv_columns_in_first_seen_order_with_empty_cells(tmp_path: Path) -> None:
    url = str(tmp_path / "t.csv")
    tables.write_rows(url, ROWS)
    assert Path(url).read_text().split("\n") == [
        "track,score,n,ok,error",
        "b,1.23456,3,True,",
        '"a, the second",,,,no vocals stem',
        "median,nan,2,False,",
        "",
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_float_format_applies_to_finite_floats_only(tmp_path: Path) -> None:
    url = str(tmp_path / "t.csv")
    tables.write_rows(
        url, [{"x": 1.23456, "y": math.inf, "z": math.nan, "i": 7}], float_format=".4f"
    )
    assert Path(url).read_text() == "x,y,z,i\n1.2346,inf,nan,7\n"


def test_parquet_keeps_types_and_given_columns(tmp_path: Path) -> None:
    csv_url, parquet_url = str(tmp_path / "t.csv"), str(tmp_path / "t.parquet")
    columns = ["track", "n", "ok", "score", "error"]
    tables.write_rows(csv_url, ROWS, columns=columns, parquet_url=parquet_url)
    table = pq.read_table(parquet_url)
    assert table.column_names == columns
    assert table.column("n").to_pylist() == [3, None, 2]
    assert str(table.schema.field("ok").type) == "bool"
    assert math.isnan(table.column("score").to_pylist()[2])
    assert Path(csv_url).read_text().split("\n")[0] == "track,n,ok,score,error"


def test_no_rows_is_a_header_only_table(tmp_path: Path) -> None:
    csv_url, parquet_url = str(tmp_path / "t.csv"), str(tmp_path / "t.parquet")
    tables.write_rows(csv_url, [], columns=["a", "b"], parquet_url=parquet_url)
    assert Path(csv_url).read_text() == "a,b\n"
    assert pq.read_table(parquet_url).num_rows == 0


def test_text_that_would_run_as_a_formula_is_defused_in_the_csv_only(tmp_path: Path) -> None:
    csv_url, parquet_url = str(tmp_path / "t.csv"), str(tmp_path / "t.parquet")
    texts = ["=cmd|' /C calc'!A0", "+1", "-2+3", "@SUM(A1)", "\tx", "\rx", "a=b", "a\rb", "", "'q"]
    rows = [{"text": t, "number": -1.5, "count": -3} for t in texts]
    tables.write_rows(csv_url, rows, float_format=".2f", parquet_url=parquet_url)
    with open(csv_url, newline="") as f:
        cells = list(csv.DictReader(f))
    assert [c["text"] for c in cells] == [
        "'=cmd|' /C calc'!A0",
        "'+1",
        "'-2+3",
        "'@SUM(A1)",
        "'\tx",
        "'\rx",
        "a=b",
        "a\rb",  # quoted: a bare CR would split the row
        "",
        "'q",
    ]
    assert {c["number"] for c in cells} == {"-1.50"} and {c["count"] for c in cells} == {"-3"}
    tables.write_rows(csv_url, [{"x": -1.5}])
    assert Path(csv_url).read_text() == "x\n-1.5\n"
    table = pq.read_table(parquet_url)
    assert table.column("text").to_pylist() == texts
    assert table.column("number").to_pylist() == [-1.5] * len(texts)


def test_separation_results_defuse_a_formula_file_name(tmp_path: Path) -> None:
    result = FileResult(input_url="=cmd.wav", track="=cmd", status=OK, error="-")
    _, csv_url = write_table(str(tmp_path), [result])
    with open(csv_url, newline="") as f:
        (row,) = csv.DictReader(f)
    assert (row["input_url"], row["track"], row["error"]) == ("'=cmd.wav", "'=cmd", "'-")
    assert row["attempts"] == "1" and row["duration_s"] == "nan"
    parquet = pq.read_table(str(tmp_path / "_results.parquet"))
    assert parquet.column("input_url").to_pylist() == ["=cmd.wav"]
