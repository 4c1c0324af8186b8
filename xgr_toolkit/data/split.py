"""The leave-one-out split of TIGER, P5 and S3-Rec, the history cap, and the samples built from it.

Per user (items oldest first): the last item is the test target, the second-to-last the validation
target, the rest the training part. The model sees at most ``max_history`` most recent items before
a target, cut by the model's truncation policy (``sliding`` or ``stable``: :mod:`xgr_toolkit.truncation`).
Training samples are every prefix of each user's training part: target ``train[k]`` with
history ``train[:k]`` for ``k >= 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..truncation import truncate
from .interactions import SequenceData

__all__ = ["DEFAULT_MAX_HISTORY", "EvalCase", "LeaveOneOut", "cap_history", "leave_one_out"]

DEFAULT_MAX_HISTORY = 20

Split = Literal["valid", "test"]


def cap_history(items: list[int], max_items: int = DEFAULT_MAX_HISTORY, truncation: str = "sliding") -> list[int]:
    """At most ``max_items`` most recent items (the end of the list), cut by ``truncation``: the last
    ``max_items`` (``sliding``), or the rest after whole quarters of ``max_items`` (``stable``)."""
    return list(truncate(items, max_items, truncation))  # ValueError where max_items < 1


@dataclass(frozen=True)
class EvalCase:
    user: int
    history: list[int]  # capped, oldest first
    target: int


@dataclass(frozen=True)
class LeaveOneOut:
    """users[u]'s training part is train[u]; its validation and test targets valid[u], test[u]."""

    users: list[int]
    train: list[list[int]]
    valid: list[int]
    test: list[int]
    dropped_users: int = 0  # users with fewer than 3 items, which cannot be split

    def __len__(self) -> int:
        return len(self.users)

    @property
    def train_sequences(self) -> dict[int, list[int]]:
        return dict(zip(self.users, self.train, strict=True))

    def cases(self, split: Split = "test", max_history: int = DEFAULT_MAX_HISTORY,
              limit_users: int | None = None, truncation: str = "sliding") -> list[EvalCase]:
        """One case a user: the validation target after the training part, or the test target after
        the training part and the validation target; histories capped by ``cap_history``."""
        if split not in ("valid", "test"):
            raise ValueError(f"split must be 'valid' or 'test'; got {split!r}")
        n = len(self.users) if limit_users is None else min(limit_users, len(self.users))
        if split == "valid":
            return [EvalCase(self.users[u], cap_history(self.train[u], max_history, truncation),
                             self.valid[u]) for u in range(n)]
        return [EvalCase(self.users[u], cap_history(self.train[u] + [self.valid[u]], max_history, truncation),
                         self.test[u]) for u in range(n)]

    def training_samples(self, max_history: int = DEFAULT_MAX_HISTORY,
                         truncation: str = "sliding") -> list[tuple[list[int], int]]:
        """(capped history, target) for every prefix of every training part with a non-empty history."""
        return [(cap_history(items[:k], max_history, truncation), items[k])
                for items in self.train for k in range(1, len(items))]

    def slice(self, limit_users: int) -> LeaveOneOut:
        """The first ``limit_users`` users."""
        n = limit_users
        return LeaveOneOut(self.users[:n], self.train[:n], self.valid[:n], self.test[:n], self.dropped_users)


def leave_one_out(data: SequenceData | dict[int, list[int]]) -> LeaveOneOut:
    """Split every user with at least 3 items; shorter users are dropped and counted."""
    sequences = data.sequences if isinstance(data, SequenceData) else data
    users, train, valid, test, dropped = [], [], [], [], 0
    for user, items in sequences.items():
        if len(items) < 3:
            dropped += 1
            continue
        users.append(user)
        train.append(list(items[:-2]))
        valid.append(items[-2])
        test.append(items[-1])
    if not users:
        raise ValueError("no user has the 3 items a leave-one-out split needs")
    return LeaveOneOut(users, train, valid, test, dropped)
