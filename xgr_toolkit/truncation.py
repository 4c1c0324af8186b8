"""Which part of a history longer than the model takes is kept: the truncation policy.

One policy a model, ``model.truncation`` in its ``config.yaml``, applied wherever histories are capped
(request building for every engine and the server, evaluation cases, training samples), so a model is
trained and evaluated on the prompts it is served.

- ``sliding`` (the default): keep the last ``limit`` units. Past the limit, each appended item drops the
  oldest one, so the kept history starts one item later on every request: every token moves position,
  and a returning user's stored prompt (``serve.prefix_cache_bytes``) is never a prefix of the new one.
- ``stable``: drop whole chunks of ``step = max(1, limit // 4)`` units from the front, the fewest chunks
  that make the rest fit. The number dropped is a multiple of ``step`` counted from the history's first
  unit, so the kept history (between ``limit - step + 1`` and ``limit`` units) starts at the same unit for
  ``step`` consecutive appends: the old prompt is a prefix of the new one for all but one append in
  ``step``. The model sees up to a quarter of the limit less history.

A unit is an item for a history of items (its L tokens are kept or dropped together) and a token for a
history of tokens. The rule counts from the history's first unit: a client that sends a user's whole
history (or one whose start moves rarely) gets stable prompts; one that cuts a window of its own does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

__all__ = ["STABLE_CHUNKS", "TRUNCATIONS", "kept_start", "truncate"]

TRUNCATIONS = ("sliding", "stable")
STABLE_CHUNKS = 4  # "stable" drops a quarter of the limit at once

T = TypeVar("T")


def kept_start(length: int, limit: int, policy: str = "sliding") -> int:
    """Index of the first unit kept of a history of ``length`` units under ``limit``.

    Args:
        length: units in the history (>= 0).
        limit: the most units the model takes (>= 1).
        policy: ``"sliding"`` or ``"stable"`` (module docstring).

    Returns:
        ``start`` with ``length - start <= limit``: units ``[start, length)`` are kept, ``start`` dropped.
        0 when the history fits; ``length - limit`` under ``sliding``; under ``stable`` the smallest
        multiple of ``max(1, limit // 4)`` that is ``>= length - limit``.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1; got {limit}")
    if policy not in TRUNCATIONS:
        raise ValueError(f"truncation must be one of {list(TRUNCATIONS)}; got {policy!r}")
    over = length - limit
    if over <= 0:
        return 0
    if policy == "sliding":
        return over
    step = max(1, limit // STABLE_CHUNKS)
    return -(-over // step) * step


def truncate(units: Sequence[T], limit: int, policy: str = "sliding") -> Sequence[T]:
    """``units`` (oldest first) cut to at most ``limit`` by ``policy``: ``units[kept_start(...):]``."""
    return units[kept_start(len(units), limit, policy):]
