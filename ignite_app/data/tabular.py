"""Reading tables as users have them: CSV files with or without a header, UTF-8 (with or without a BOM)
or Latin-1, gzipped, with a saved pandas index, missing cells, text columns and numbers written with spaces.

pandas reads the file (every cell as text, so that nothing is guessed behind our back); this module
decides what each column is and turns every problem into one :class:`UserError` that says what to change.
"""

from __future__ import annotations

import codecs
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ignite_app.errors import UserError

if TYPE_CHECKING:  # pandas is imported when a file is read: ~0.5 s that runs on built-in data never pay
    import pandas as pd

# pandas' own list of missing-value markers, and the "?" of many public datasets.
MISSING = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                     "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null", "?"})
SPACES = re.compile(r"[\s\u00a0\u202f]+")  # "1 234.5", with plain, no-break or thin spaces
BOMS = ("\ufeff", "ï»¿")  # a UTF-8 byte order mark, read as UTF-8 or as Latin-1
INDEX_NAMES = ("", "Unnamed: 0")
HEADER_EVIDENCE_ROWS = 1000  # rows looked at to decide whether the first one is a header


@dataclass
class Column:
    """One column: ``numbers`` (float64, NaN where missing) or ``text`` (str, None where missing).

    A column of numbers keeps its cells as written in ``raw`` too: a model that knows the column as text
    (codes such as ``007``) reads those, not the numbers' names (``7``, an unseen category).
    """

    name: str
    numbers: np.ndarray | None = None
    text: np.ndarray | None = None
    raw: np.ndarray | None = None  # object array of the stripped cells, beside ``numbers``

    @property
    def is_text(self) -> bool:
        """Whether the column holds words rather than numbers."""
        return self.text is not None

    def missing(self) -> np.ndarray:
        """A boolean mask of the missing cells."""
        if self.text is not None:
            return np.array([v is None for v in self.text], dtype=bool)
        return np.isnan(self.numbers)

    def take(self, rows: np.ndarray) -> Column:
        """The column restricted to ``rows``."""
        if self.text is not None:
            return Column(self.name, text=self.text[rows])
        return Column(self.name, numbers=self.numbers[rows], raw=None if self.raw is None else self.raw[rows])


@dataclass
class Table:
    """A table read from a file: named, typed columns and the notes worth telling the user."""

    path: Path
    columns: list[Column]
    header: bool
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return 0 if not self.columns else len(self.columns[0].numbers if self.columns[0].text is None else self.columns[0].text)

    @property
    def names(self) -> list[str]:
        """The column names (positions "0", "1", ... in a file without a header)."""
        return [c.name for c in self.columns]

    def take(self, rows: np.ndarray) -> Table:
        """The table restricted to ``rows``."""
        return Table(self.path, [c.take(rows) for c in self.columns], self.header, self.notes)

    def line(self, row: int) -> int:
        """The line number in the file of data row ``row`` (counting the header, ignoring blank lines)."""
        return row + 1 + int(self.header)


def read_table(path: Path, source: str, encoding: str | None = None) -> Table:
    """Read a CSV (or .csv.gz) file; ``source`` names the option in errors (``csv:``, ``--input``)."""
    frame, notes = _read_cells(Path(path), source, encoding)
    frame = frame[~_blank_rows(frame)].reset_index(drop=True)
    if frame.empty:
        raise UserError(f"CSV file {str(path)!r} is empty; it needs rows of numbers")
    header = _has_header(frame)
    names = _column_names(frame.iloc[0].tolist(), path) if header else [str(i) for i in range(frame.shape[1])]
    body = frame.iloc[int(header):].reset_index(drop=True)
    if body.empty:
        raise UserError(f"CSV file {str(path)!r} has a header but no rows; it needs rows of values")
    _check_row_lengths(body, path, header)
    table = Table(Path(path), [_parse_column(name, body[c], path, header, i) for i, (c, name) in enumerate(zip(body.columns, names))],
                  header, notes)
    return _drop_index_column(table)


def _read_cells(path: Path, source: str, encoding: str | None) -> tuple[pd.DataFrame, list[str]]:
    """Every cell as text (NaN only where a row is short), in the first encoding that decodes the file."""
    import pandas as pd

    if not path.is_file():
        raise UserError(f"CSV file {str(path)!r} does not exist; check the path after {source}")
    if encoding is not None:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise UserError(f"unknown --encoding {encoding!r}; use a Python codec name such as utf-8, latin-1 or cp1252") from None
        try:
            "a".encode(encoding)
        except LookupError:  # a bytes or text transform (hex, rot13, ...), not a text encoding
            raise UserError(f"--encoding {encoding!r} is not a text encoding; use one such as utf-8, latin-1 or cp1252") from None
    for enc in [encoding] if encoding else ["utf-8-sig", "latin-1"]:
        try:
            # The python engine, unlike the C one, leaves the cells of a short row NaN instead of "": a broken row is found.
            frame = pd.read_csv(path, header=None, dtype=str, encoding=enc, keep_default_na=False, na_filter=False,
                                skip_blank_lines=True, compression="infer", sep=",", engine="python")
        except UnicodeError as exc:  # UnicodeDecodeError, or a codec's own check (UTF-16 without its BOM)
            if encoding:
                where = (f"byte {exc.object[exc.start:exc.start + 1]!r} at position {exc.start}"
                         if isinstance(exc, UnicodeDecodeError) else str(exc))
                raise UserError(f"CSV file {str(path)!r} is not valid {encoding} text ({where}); "
                                "pass the file's encoding with --encoding") from None
            continue
        except pd.errors.EmptyDataError:
            raise UserError(f"CSV file {str(path)!r} is empty; it needs rows of numbers") from None
        except pd.errors.ParserError as exc:
            raise UserError(f"CSV file {str(path)!r}: {_parser_problem(exc)}; every row needs the same columns") from None
        except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile, a truncated .gz, unreadable files
            raise UserError(f"CSV file {str(path)!r} cannot be read ({type(exc).__name__}: {exc}); "
                            "give a plain or gzipped CSV file") from None
        notes = [] if enc != "latin-1" else [f"{path.name} is not UTF-8: read it as Latin-1 (pass --encoding to choose another)"]
        return frame, notes
    raise AssertionError("latin-1 decodes any bytes")


def _parser_problem(exc: Exception) -> str:
    """pandas' 'Expected 2 fields in line 3, saw 3' as 'row 3 has 3 columns, expected 2'."""
    match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
    if match:
        return f"row {match.group(2)} has {match.group(3)} columns, expected {match.group(1)}"
    return str(exc).strip().splitlines()[0][:200]


def _blank_rows(frame: pd.DataFrame) -> np.ndarray:
    """Rows whose cells are all empty or whitespace."""
    blank = np.ones(len(frame), dtype=bool)
    for c in frame.columns:
        cells = frame[c]
        blank &= (cells.isna() | cells.str.strip().eq("")).to_numpy()
    return blank


def _is_number(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        float(SPACES.sub("", value))
    except ValueError:
        return False
    return True


def _is_missing(value: object) -> bool:
    return not isinstance(value, str) or value.strip() in MISSING


def _has_header(frame: pd.DataFrame) -> bool:
    """The first row names the columns when none of its cells is a number and it does not look like data.

    Data-like means: no column is numbers below a word in the first row, and every first-row word
    comes again further down its column (a text value, not a name). pandas' ``,0,1,2`` header
    (an unnamed index, then numbered columns) counts as a header.
    """
    first = [v.strip() if isinstance(v, str) else "" for v in frame.iloc[0]]
    if len(frame) > 1 and first[1:] == [str(i) for i in range(len(first) - 1)] and first[0] in INDEX_NAMES:
        return True
    if any(_is_number(v) for v in first):
        return False
    rest = frame.iloc[1:HEADER_EVIDENCE_ROWS]
    for c, name in zip(frame.columns, first):
        if name in MISSING:
            continue  # an empty name (a saved index) says nothing either way
        below = [v for v in rest[c] if not _is_missing(v)]
        if below and all(_is_number(v) for v in below):
            return True
        if name in {v.strip() for v in below}:
            return False
    return True


def _column_names(row: list[object], path: Path) -> list[str]:
    names = [v.strip() if isinstance(v, str) else "" for v in row]
    for bom in BOMS:
        names[0] = names[0].removeprefix(bom)
    names = [name or f"column {i + 1}" if i else name for i, name in enumerate(names)]
    seen: set[str] = set()
    for name in names:
        if name in seen and name:
            raise UserError(f"CSV file {str(path)!r}: the header names column {name!r} twice; give every column its own name")
        seen.add(name)
    return names


def _check_row_lengths(body: pd.DataFrame, path: Path, header: bool) -> None:
    """pandas pads short rows with NaN (the cells are text otherwise): each one is a broken row."""
    short = body.isna().any(axis=1).to_numpy()
    if short.any():
        row = int(np.argmax(short))
        width = int(body.iloc[row].notna().sum())
        raise UserError(f"CSV file {str(path)!r}: row {row + 1 + int(header)} has {width} columns, expected {body.shape[1]}; "
                        "every row needs the same columns (leave a missing value empty, e.g. 1,,3)")


def _parse_column(name: str, cells: pd.Series, path: Path, header: bool, index: int) -> Column:
    """Numbers when at least half of the present cells are numbers (any other cell is then an error), else text."""
    import pandas as pd

    text = cells.str.strip()
    missing = text.isin(MISSING).to_numpy()
    numbers = pd.to_numeric(text.where(~missing), errors="coerce").to_numpy(dtype=np.float64, copy=True)
    bad = np.isnan(numbers) & ~missing
    if bad.any():  # "12 345": only the cells that did not parse pay for the regular expression
        spaced = pd.to_numeric(text[bad].str.replace(SPACES, "", regex=True), errors="coerce").to_numpy(dtype=np.float64)
        numbers[bad] = spaced
        bad = np.isnan(numbers) & ~missing
    present = int((~missing).sum())
    if present and bad.sum() * 2 > present:
        return Column(name, text=np.array([None if m else v for v, m in zip(text.tolist(), missing)], dtype=object))
    if bad.any():
        row = int(np.argmax(bad))
        raise UserError(f"CSV file {str(path)!r}: non-numeric value {cells.iloc[row]!r} in row {row + 1 + int(header)}, "
                        f"column {index + 1} ({name!r}), a column of numbers; fix the cell or leave it empty to mark it missing")
    if np.isinf(numbers).any():
        row = int(np.argmax(np.isinf(numbers)))
        raise UserError(f"CSV file {str(path)!r}: infinite value in row {row + 1 + int(header)}, column {index + 1} ({name!r}); "
                        "use a finite number or leave the cell empty")
    return Column(name, numbers=numbers, raw=text.to_numpy(dtype=object))


def _drop_index_column(table: Table) -> Table:
    """A leading column with no name (a saved pandas index) that numbers the rows is not a feature."""
    first = table.columns[0] if table.columns else None
    if first is None or len(table.columns) < 2 or first.is_text or first.missing().any():
        return table
    distinct = len(np.unique(first.numbers)) == len(first.numbers)
    unnamed = table.header and first.name in INDEX_NAMES
    if unnamed and distinct:
        table.notes.append(f"dropped the first column of {table.path.name}: it has no name and numbers the rows "
                           "(a saved index), so it is not a feature")
        return Table(table.path, table.columns[1:], table.header, table.notes)
    if unnamed:
        first.name = "column 1"
    return table


def target_columns(target: str | None, table: Table) -> list[int]:
    """The target columns: by name or index, several separated by commas; the last column by default."""
    width = len(table.columns)
    if width < 2:
        hint = " (is it separated by ';'? save it with commas)" if ";" in (table.names[0] if table.names else "") else ""
        raise UserError(f"CSV file {str(table.path)!r} has one column{hint}; it needs features and a target column")
    if target is None:
        return [width - 1]
    picked = [_one_target(name.strip(), table) for name in (target.split(",") if "," in target and target not in table.names else [target])]
    if len(set(picked)) != len(picked):
        raise UserError(f"--target {target!r} names a column twice; name each target column once")
    if len(picked) >= width:
        raise UserError(f"--target {target!r} leaves no feature column in {str(table.path)!r}; keep at least one")
    return picked


def _one_target(target: str, table: Table) -> int:
    width, names = len(table.columns), table.names
    if target in names and table.header:
        return names.index(target)
    if target.lstrip("-").isdigit() and -width <= int(target) < width:
        return int(target) % width
    hint = f"columns are {', '.join(names)}" if table.header else f"use a column index from 0 to {width - 1}"
    raise UserError(f"--target {target!r} is not a column of {str(table.path)!r}; {hint}")
