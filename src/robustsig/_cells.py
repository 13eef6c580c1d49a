"""Text cells of robustsig's tables that could do harm: formulas a spreadsheet would run, control characters.

Formulas (CSV or formula injection), neutralised as OWASP advises. A spreadsheet opening a CSV file (Excel,
LibreOffice Calc, Google Sheets) reads a cell that starts with ``=``, ``+``, ``-`` or ``@`` as a formula:
``=HYPERLINK(...)`` sends data away when clicked, ``+cmd|' /C calc'!A0`` starts a program through DDE; a leading tab,
carriage return or NUL can hide one, and some spreadsheets read the full-width forms (U+FF1D, U+FF0B, U+FF0D,
U+FF20) alike. Text in robustsig's CSV files comes from users (model names, backbones, pretraining tags, dataset
roots) and from datasets (Broden concept names), so every text cell that starts with one of these characters is
written with a leading apostrophe (OWASP, "CSV Injection": prepend a single quote): the spreadsheet shows the text
and runs nothing. A number (``-0.5``, ``+1.2``, ``-3e-05``) is not a formula and is written as it is.

A results table must read back to the values written: :func:`escape_cell` also prefixes a text that already starts
with an apostrophe, and :func:`unescape_cell` removes exactly one, so ``unescape_cell(escape_cell(s)) == s`` for
every string.

Line breaks. Python's ``csv`` writer quotes a field holding a character of its own line terminator only, so with
``"\n"`` line ends a bare carriage return goes out unquoted, and every reader (Excel, ``csv.reader``) breaks the row
there: the rest of the cell starts a new row, where it is a formula again. :func:`csv_line` quotes a field holding
any line break. Control characters and line separators (:data:`CONTROL`) end or garble a row of a text table: the
study config refuses them in its labels, the Markdown tables show them escaped.

>>> escape_cell("=HYPERLINK(\\"http://x\\")"), escape_cell("-0.5"), escape_cell("ViT-B-32")
('\\'=HYPERLINK("http://x")', '-0.5', 'ViT-B-32')
>>> unescape_cell(escape_cell("'quoted")) == "'quoted"
True
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable

QUOTE = "'"
"""The mark that makes a spreadsheet read a cell as text."""
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\0", "\uff1d", "\uff0b", "\uff0d", "\uff20")
"""First characters that make a spreadsheet read a cell as a formula (OWASP's list and the full-width forms)."""
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
"""Control characters (C0, DEL, C1) and line and paragraph separators: they end or garble a row of a text table
(a line break in a Markdown cell ends its row)."""


def is_formula(text: str) -> bool:
    """Whether a spreadsheet would read ``text`` as a formula (it starts with one of :data:`FORMULA_STARTS` and
    is not a plain number)."""
    return text.startswith(FORMULA_STARTS) and not _NUMBER.fullmatch(text)


def escape_cell(text: str) -> str:
    """``text`` as a CSV cell no spreadsheet runs: an apostrophe before a formula (or before a leading
    apostrophe, so that :func:`unescape_cell` gives ``text`` back)."""
    return QUOTE + text if text.startswith(QUOTE) or is_formula(text) else text


def unescape_cell(text: str) -> str:
    """The text :func:`escape_cell` was given."""
    return text[1:] if text.startswith(QUOTE) else text


def csv_line(cells: Iterable[str]) -> str:
    """One CSV row ending in ``"\\n"``, a field quoted when it holds a delimiter, a quote or any line break (a bare
    carriage return included, which ``csv.writer(lineterminator="\\n")`` leaves unquoted).

    >>> csv_line(["a", "x\\ry", "b,c"])
    'a,"x\\ry","b,c"\\n'
    """
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(cells)  # quotes the characters of its terminator: CR, LF
    return buffer.getvalue()[:-2] + "\n"
