"""The exports' XLSX writer (apps.analytics.xlsx): a workbook that openpyxl reads back with the
same values as one openpyxl's own write-only workbook made of the same rows."""

from __future__ import annotations

import io
import zipfile
from decimal import Decimal

import openpyxl
import pytest
from lxml import etree

from apps.analytics import xlsx
from apps.executions.choices import ExecutionStatus

ROWS = [
    ["id", "text", "number"],
    [1, "plain", 2.5],
    [2, "a & b < c > d \"quoted\" 'single'", -0.1],
    [3, "line\nbreak, tab\tand CR\r\nend", 1e20],
    [4, "  surrounded  ", 10**15],
    [5, "é ü — 漢字 🚀", Decimal("12.50")],
    [6, "", None],
    [7, None, 0],
    [8, "x" * 40_000, 1 / 3],
    [9, ExecutionStatus.COMPLETED, True],
    [],
    [10, "'=already escaped", float("nan")],
]


def read(book: bytes, sheet: str) -> list[tuple]:
    return list(openpyxl.load_workbook(io.BytesIO(book))[sheet].iter_rows(values_only=True))


def openpyxls(sheets) -> bytes:
    book = openpyxl.Workbook(write_only=True)
    for name, rows in sheets:
        sheet = book.create_sheet(name)
        for row in rows:
            sheet.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def ours(sheets) -> bytes:
    out = io.BytesIO()
    xlsx.write_workbook(out, sheets)
    return out.getvalue()


def test_it_reads_back_as_openpyxls_own_workbook_does():
    sheets = [("Executions", ROWS), ("Summary", [["From", "2026-01-10"], [], ["Executions", 8]])]

    written = ours(sheets)

    assert openpyxl.load_workbook(io.BytesIO(written)).sheetnames == ["Executions", "Summary"]
    for name, _rows in sheets:
        assert read(written, name) == read(openpyxls(sheets), name)
    assert read(written, "Executions")[8][1] == "x" * 32_767  # Excel's limit, as openpyxl cuts


def test_its_parts_are_well_formed_xml_and_the_sheet_streams_row_by_row():
    rows = ([n, f"row {n}"] for n in range(2 * xlsx.ROWS_PER_WRITE + 3))  # a generator

    with zipfile.ZipFile(io.BytesIO(ours([("Big", rows)]))) as book:
        names = book.namelist()
        for name in names:
            etree.fromstring(book.read(name))  # raises if not well-formed

    assert names[0] == "[Content_Types].xml"
    assert "xl/worksheets/sheet1.xml" in names and "xl/styles.xml" in names


def test_a_control_character_xml_cannot_hold_is_replaced_not_fatal():
    """openpyxl refuses such a cell (IllegalCharacterError) and so the whole export."""
    rows = [["colour \x1b[31mred\x1b[0m", "nul \x00 here"]]

    assert read(ours([("S", rows)]), "S") == [("colour \ufffd[31mred\ufffd[0m", "nul \ufffd here")]


def test_a_value_that_is_neither_number_nor_text_is_refused():
    with pytest.raises(TypeError, match="cannot write"):
        ours([("S", [[object()]])])


def test_column_letters_go_on_past_z():
    assert xlsx.column_letters(28)[-3:] == ["Z", "AA", "AB"]
    assert xlsx.column_letters(703)[-1] == "AAA"
