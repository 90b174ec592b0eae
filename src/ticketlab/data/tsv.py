"""Reading tab-separated files strictly: every row must have the header's number of fields.

GLUE's files are plain TSV without quoting (sentences contain unbalanced ``"``), so rows are split
on tabs only, never parsed as CSV. A row with the wrong number of fields is an error naming the
file and line, because silently dropping or merging rows would shift labels against sentences.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ticketlab.errors import TicketlabError


@dataclass
class TsvTable:
    """The rows of a TSV file as dicts keyed by column name, with their 1-based line numbers."""

    path: Path
    columns: list[str]
    rows: list[list[str]]
    line_numbers: list[int]

    def column(self, name: str) -> list[str]:
        if name not in self.columns:
            raise TicketlabError(f"{self.path}: no column {name!r} (columns: {', '.join(self.columns)})")
        position = self.columns.index(name)
        return [row[position] for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)


def read_tsv(path: str | os.PathLike, columns: Sequence[str] | None = None) -> TsvTable:
    """Read ``path``; its first line is the header unless ``columns`` names them (headerless files).

    A leading byte-order mark is dropped (MRPC has one). Empty lines are skipped; a line with a
    different number of fields than the header raises :class:`TicketlabError` naming file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise TicketlabError(f"data file {str(path)!r} does not exist")
    try:
        # utf-8-sig drops the byte-order mark if there is one; newline="" keeps "\r" visible so
        # that CRLF files are handled below rather than by the platform.
        with open(path, encoding="utf-8-sig", newline="") as handle:
            lines = handle.read().split("\n")
    except UnicodeDecodeError as error:
        raise TicketlabError(f"{path} is not UTF-8 text ({error})") from error
    header: list[str] | None = list(columns) if columns is not None else None
    rows: list[list[str]] = []
    line_numbers: list[int] = []
    for number, line in enumerate(lines, start=1):
        line = line.removesuffix("\r")
        if not line:  # blank lines (e.g. at the end) carry no row; a line of tabs is a row
            continue
        fields = line.split("\t")
        if header is None:
            header = [name.strip() for name in fields]
            continue
        if len(fields) != len(header):
            raise TicketlabError(
                f"{path}, line {number}: expected {len(header)} tab-separated fields, found {len(fields)}"
            )
        rows.append(fields)
        line_numbers.append(number)
    if header is None:
        raise TicketlabError(f"{path} is empty")
    return TsvTable(path=path, columns=header, rows=rows, line_numbers=line_numbers)
