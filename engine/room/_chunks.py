"""Lists split so that each part fits in one message (spec §3.2, §5.4): pure, no I/O."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from plait.protocol import MAX_LIST

T = TypeVar("T")


def chunks(items: Sequence[T], size_of: Callable[[T], int], budget: int) -> Iterator[list[T]]:
    """Consecutive parts of `items`, in order, each of at most MAX_LIST items whose sizes add
    up to at most `budget` bytes (an item larger than `budget` goes alone). Always yields at
    least one part, empty if `items` is."""
    part: list[T] = []
    used = 0
    for item in items:
        size = size_of(item)
        if part and (used + size > budget or len(part) >= MAX_LIST):
            yield part
            part, used = [], 0
        part.append(item)
        used += size
    yield part


def prefix(items: Sequence[T], size_of: Callable[[T], int], budget: int) -> list[T]:
    """The longest prefix of `items` that fits in one part (see `chunks`)."""
    return next(chunks(items, size_of, budget))
