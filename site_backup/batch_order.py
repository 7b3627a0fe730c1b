"""The order a streamed backup copies batches in: heaviest first within a look-ahead window,
and a dry run's batches joined into fewer task runs."""

from __future__ import annotations

import heapq
import itertools
from typing import Iterable, Iterator

from .files import Batch, upload_weight


# A dry run's copy task takes this many batches at once (see `joined`).
DRY_RUN_BATCHES_PER_TASK = 32


def joined(batches: Iterable[Batch], count: int) -> Iterator[Batch]:
    """Every `count` consecutive batches as one. A dry run copies them so: it keeps no
    checkpoint, so where one batch ends means nothing to it, and each task run costs the
    orchestrator the same, however many files it holds."""
    if count < 1:
        raise ValueError("batches are joined at least 1 at a time")
    stream = iter(batches)
    while group := list(itertools.islice(stream, count)):
        if len(group) == 1:
            yield group[0]
        else:
            yield Batch(itertools.chain.from_iterable(group), parts=sum(b.parts for b in group))


def heaviest_first_within(batches: Iterable[Batch], window: int) -> Iterator[Batch]:
    """The batches heaviest first among the next `window` of them: the benefit of
    `heaviest_first` for a stream that is never held whole. A stream of at most `window`
    batches comes out exactly as `heaviest_first` orders it; no more than `window`
    batches are held."""
    if window < 1:
        raise ValueError("the look-ahead window must hold at least 1 batch")
    held: list[tuple[int, int, Batch]] = []  # (-weight, arrival, batch): heaviest first, ties in walk order
    for arrival, batch in enumerate(batches):
        heapq.heappush(held, (-upload_weight(batch), arrival, batch))
        if len(held) >= window:
            yield heapq.heappop(held)[2]
    while held:
        yield heapq.heappop(held)[2]
