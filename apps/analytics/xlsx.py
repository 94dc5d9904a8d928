"""A streaming XLSX writer for the exports: sheets of plain values (numbers and text), written
row by row into the zip with constant memory.

openpyxl's write-only workbook builds a cell object and an lxml element for every cell: about
90 µs a row of fourteen cells, which alone held the export under 11,000 rows/s. Here a row is
one formatted string. The cells are written as openpyxl writes them (numbers as `n`, text as
inline strings, `xml:space="preserve"` when a text has surrounding white space, at most 32,767
characters), so the workbook reads back the same. Differences, all on the safe side: text is
always text (openpyxl makes a formula of a text starting with "=" and an error cell of "#N/A";
the exports escape the first anyway), an empty text is no cell (as openpyxl reads it back: None),
and a control character that XML cannot carry becomes U+FFFD (openpyxl refused the whole
workbook).
"""

from __future__ import annotations

import math
import re
import zipfile
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import IO, Any
from xml.sax.saxutils import quoteattr

MAX_TEXT = 32_767  # Excel's limit for a cell, where openpyxl truncates too
ROWS_PER_WRITE = 1000

_MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_RELATIONSHIPS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_PACKAGE_RELATIONSHIPS = "http://schemas.openxmlformats.org/package/2006/relationships"
_TYPES = "application/vnd.openxmlformats-officedocument.spreadsheetml"
_XML = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
_SHEET_START = f'{_XML}<worksheet xmlns="{_MAIN}"><sheetData>'.encode()
_SHEET_END = b"</sheetData></worksheet>"
# The styles every workbook carries: one font, the two fills Excel requires, one format.
_STYLES = (
    f'{_XML}<styleSheet xmlns="{_MAIN}">'
    '<fonts count="1"><font><sz val="11"/><name val="Calibri"/></font></fonts>'
    '<fills count="2"><fill><patternFill patternType="none"/></fill>'
    '<fill><patternFill patternType="gray125"/></fill></fills>'
    '<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
    '<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>'
    '<cellXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/></cellXfs>'
    '<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>'
    "</styleSheet>"
)

# What XML text cannot hold as it is: markup, and CR (a parser would read it as LF; lxml, and so
# openpyxl, writes it as a character reference). Control characters are not XML at all.
_SPECIAL = re.compile("[&<>\r\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_UNWRITABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def column_letters(count: int) -> list[str]:
    """A, B, …, Z, AA, AB, …: the first `count` column names."""
    letters = []
    for index in range(1, count + 1):
        name = ""
        while index:
            index, rest = divmod(index - 1, 26)
            name = chr(65 + rest) + name
        letters.append(name)
    return letters


class _Rows:
    """Formats the rows of one sheet: `<row>` elements with each cell's reference."""

    def __init__(self) -> None:
        self.letters: list[str] = []

    def row(self, number: int, values: Sequence[Any]) -> str:
        if len(values) > len(self.letters):
            self.letters = column_letters(len(values))
        cells = [f'<row r="{number}">']
        for letter, value in zip(self.letters, values, strict=False):
            if value is None or value == "":
                continue
            kind = value.__class__
            if kind is str:
                cells.append(f'<c r="{letter}{number}" t="inlineStr"><is>{_t(value)}</is></c>')
            elif kind is int:
                cells.append(f'<c r="{letter}{number}" t="n"><v>{value}</v></c>')
            else:
                cells.append(_other(f"{letter}{number}", value))
        cells.append("</row>")
        return "".join(cells)


def _t(value: str) -> str:
    value = value[:MAX_TEXT]
    preserve = ' xml:space="preserve"' if value != value.strip() else ""
    if _SPECIAL.search(value):
        value = _UNWRITABLE.sub("\ufffd", value)
        value = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        value = value.replace("\r", "&#13;")
    return f"<t{preserve}>{value}</t>"


def _other(reference: str, value: Any) -> str:
    """A cell of a less common type (the Summary sheet's)."""
    if isinstance(value, bool):
        return f'<c r="{reference}" t="b"><v>{int(value)}</v></c>'
    if isinstance(value, int):
        return f'<c r="{reference}" t="n"><v>{int(value)}</v></c>'
    if isinstance(value, float | Decimal):
        number = float(value)  # as openpyxl writes it: 16 significant digits, no NaN
        shown = f"{number:.16g}" if math.isfinite(number) else ""
        return f'<c r="{reference}" t="n"><v>{shown}</v></c>'
    if isinstance(value, str):  # a subclass: TextChoices
        return f'<c r="{reference}" t="inlineStr"><is>{_t(str(value))}</is></c>'
    raise TypeError(f"cannot write {value!r} to a spreadsheet cell")


def write_workbook(
    target: str | IO[bytes], sheets: Sequence[tuple[str, Iterable[Sequence]]]
) -> None:
    """Write a workbook of `sheets` ((name, rows) pairs, in order) to `target`, a path or a
    binary file. Each sheet's rows are read as they are written, one sheet after the other."""
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as book:
        book.writestr("[Content_Types].xml", _content_types(len(sheets)))
        book.writestr("_rels/.rels", _package_relationships())
        book.writestr("xl/workbook.xml", _workbook([name for name, _rows in sheets]))
        book.writestr("xl/_rels/workbook.xml.rels", _workbook_relationships(len(sheets)))
        book.writestr("xl/styles.xml", _STYLES)
        for index, (_name, rows) in enumerate(sheets, start=1):
            with book.open(f"xl/worksheets/sheet{index}.xml", "w") as part:
                part.write(_SHEET_START)
                formatter, pending = _Rows(), []
                for number, values in enumerate(rows, start=1):
                    pending.append(formatter.row(number, values))
                    if len(pending) == ROWS_PER_WRITE:
                        part.write("".join(pending).encode())
                        pending.clear()
                part.write("".join(pending).encode())
                part.write(_SHEET_END)


def _workbook(names: list[str]) -> str:
    sheets = "".join(
        f'<sheet name={quoteattr(name)} sheetId="{index}" r:id="rId{index}"/>'
        for index, name in enumerate(names, start=1)
    )
    return (
        f'{_XML}<workbook xmlns="{_MAIN}" xmlns:r="{_RELATIONSHIPS}">'
        f"<sheets>{sheets}</sheets></workbook>"
    )


def _workbook_relationships(count: int) -> str:
    links = [
        f'<Relationship Id="rId{index}" Type="{_RELATIONSHIPS}/worksheet" '
        f'Target="worksheets/sheet{index}.xml"/>'
        for index in range(1, count + 1)
    ]
    links.append(
        f'<Relationship Id="rId{count + 1}" Type="{_RELATIONSHIPS}/styles" Target="styles.xml"/>'
    )
    return f'{_XML}<Relationships xmlns="{_PACKAGE_RELATIONSHIPS}">{"".join(links)}</Relationships>'


def _package_relationships() -> str:
    return (
        f'{_XML}<Relationships xmlns="{_PACKAGE_RELATIONSHIPS}">'
        f'<Relationship Id="rId1" Type="{_RELATIONSHIPS}/officeDocument" '
        'Target="xl/workbook.xml"/></Relationships>'
    )


def _content_types(count: int) -> str:
    sheets = "".join(
        f'<Override PartName="/xl/worksheets/sheet{index}.xml" '
        f'ContentType="{_TYPES}.worksheet+xml"/>'
        for index in range(1, count + 1)
    )
    return (
        f'{_XML}<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" '
        'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        f'<Override PartName="/xl/workbook.xml" ContentType="{_TYPES}.sheet.main+xml"/>'
        f'<Override PartName="/xl/styles.xml" ContentType="{_TYPES}.styles+xml"/>'
        f"{sheets}</Types>"
    )
