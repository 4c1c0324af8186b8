"""Interaction logs -> per-user item sequences, oldest first.

Two formats:

* the sequential format of ``sequences.txt`` (S3-Rec, TIGER, P5): one user a line,
  ``user_id item_id item_id ...``, items already in chronological order;
* RecBole's atomic ``.inter`` files: tab-separated, a typed header such as
  ``user_id:token  item_id:token  rating:float  timestamp:float``, one interaction a row, in any
  order; each user's items are sorted by timestamp (ties keep file order).

Item ids are positive integers. A ``.inter`` file whose item tokens are not all integers gets ids
``1..N`` in order of first appearance, and :attr:`SequenceData.item_index` maps token -> id.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DataError", "SequenceData", "load_interactions", "load_inter", "load_sequences"]


class DataError(ValueError):
    """A data file is malformed; the message names the file, the line and what was expected."""


@dataclass(frozen=True)
class SequenceData:
    """Each user's items, oldest first.

    sequences: user id -> item ids (positive integers), in chronological order.
    item_index: original item token -> item id, when the file's tokens were not integers; else empty.
    user_index: original user token -> user id, likewise.
    """

    sequences: dict[int, list[int]]
    item_index: dict[str, int] = field(default_factory=dict)
    user_index: dict[str, int] = field(default_factory=dict)

    @property
    def num_interactions(self) -> int:
        return sum(len(items) for items in self.sequences.values())

    @property
    def item_ids(self) -> list[int]:
        """Every item id that occurs, ascending."""
        return sorted({i for items in self.sequences.values() for i in items})


def _positive_int(text: str, path: Path, line: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise DataError(f"{path}:{line}: {what} must be an integer; got {text!r}") from None
    if value < 1:
        raise DataError(f"{path}:{line}: {what} must be >= 1 (ids are 1-based); got {value}")
    return value


def load_sequences(path: str | Path) -> SequenceData:
    """Read ``user_id item_id item_id ...`` lines (whitespace-separated, items chronological)."""
    path = Path(path)
    sequences: dict[int, list[int]] = {}
    with path.open() as f:
        for line_no, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2:
                raise DataError(f"{path}:{line_no}: expected 'user_id item_id ...'; got {line.strip()!r}")
            user = _positive_int(fields[0], path, line_no, "user id")
            if user in sequences:
                raise DataError(f"{path}:{line_no}: user {user} appears twice; one line a user")
            sequences[user] = [_positive_int(t, path, line_no, "item id") for t in fields[1:]]
    if not sequences:
        raise DataError(f"{path}: no users")
    return SequenceData(sequences)


def _ids_of(tokens: list[str]) -> tuple[list[int], dict[str, int]]:
    """Tokens -> ids: the integers themselves when every token is a positive integer, else 1..N."""
    if all(t.isdigit() and int(t) > 0 for t in tokens):
        return [int(t) for t in tokens], {}
    index: dict[str, int] = {}
    return [index.setdefault(t, len(index) + 1) for t in tokens], index


def load_inter(path: str | Path, user_field: str = "user_id", item_field: str = "item_id",
               time_field: str = "timestamp") -> SequenceData:
    """Read a RecBole atomic ``.inter`` file; each user's items sorted by ``time_field``."""
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty file; expected a header such as 'user_id:token<TAB>item_id:token'")
        names = [h.split(":", 1)[0] for h in header]
        missing = [n for n in (user_field, item_field, time_field) if n not in names]
        if missing:
            raise DataError(f"{path}: header {header} has no field(s) {missing}; "
                            f"expected 'name:type' columns including {user_field}, {item_field}, {time_field}")
        u, i, t = names.index(user_field), names.index(item_field), names.index(time_field)
        rows = []
        for line_no, row in enumerate(reader, start=2):
            if not row or row == [""]:
                continue
            if len(row) != len(header):
                raise DataError(f"{path}:{line_no}: {len(row)} fields, the header has {len(header)}")
            try:
                stamp = float(row[t])
            except ValueError:
                raise DataError(f"{path}:{line_no}: {time_field} must be a number; got {row[t]!r}") from None
            rows.append((row[u], row[i], stamp))
    if not rows:
        raise DataError(f"{path}: no interactions")
    users, user_index = _ids_of([r[0] for r in rows])
    order = sorted(range(len(rows)), key=lambda k: rows[k][2])  # stable: ties keep file order
    items, item_index = _ids_of([rows[k][1] for k in order])
    sequences: dict[int, list[int]] = {}
    for k, item in zip(order, items, strict=True):
        sequences.setdefault(users[k], []).append(item)
    return SequenceData(dict(sorted(sequences.items())), item_index, user_index)


def load_interactions(path: str | Path) -> SequenceData:
    """A RecBole ``.inter`` file by its suffix, else the sequential format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file (a sequences.txt or a RecBole .inter file)")
    return load_inter(path) if path.suffix == ".inter" else load_sequences(path)
