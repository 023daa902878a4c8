"""Waiting queues kept in priority order, optionally split into predicted-RL buckets.

A policy gives each queued request a static sort key when it is enqueued. Keys must not depend on the
current time: time-dependent priorities are written so that `now` cancels out (a deadline instead of
a slack, arrival time instead of waiting time), which keeps every queue sorted without re-sorting.
With buckets, the queue is one sorted list per bucket; `heads()` yields the best head first, which is
how EcoServe admits a bucket's requests together (time-synced batching).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from ecosched.core.request import RequestState


class BucketedQueue:
    """Requests sorted by `order_key` within each bucket; `bucketed=False` keeps a single list."""

    def __init__(self, bucketed: bool) -> None:
        self.bucketed = bucketed
        self._lists: dict[int, list[tuple[tuple[float, ...], RequestState]]] = {}
        self._size = 0
        self._seq = 0
        self._removals = 0

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[RequestState]:
        """Every queued request, best first across buckets (merges the bucket lists)."""
        merged = sorted(item for lst in self._lists.values() for item in lst)
        return (state for _, state in merged)

    @property
    def version(self) -> int:
        """Grows with every push and removal: a queue with the same version has not changed."""
        return self._seq + self._removals

    def push(self, state: RequestState, key: tuple[float, ...]) -> None:
        self._seq += 1
        state.order_key = (*key, self._seq)
        lst = self._lists.setdefault(self._bucket(state), [])
        bisect.insort(lst, (state.order_key, state), key=lambda item: item[0])
        self._size += 1

    def remove(self, state: RequestState) -> None:
        bucket = self._bucket(state)
        lst = self._lists[bucket]
        i = bisect.bisect_left(lst, state.order_key, key=lambda item: item[0])
        if i == len(lst) or lst[i][1] is not state:
            raise KeyError(state.request_id)
        del lst[i]
        if not lst:
            del self._lists[bucket]
        self._size -= 1
        self._removals += 1

    def __contains__(self, state: RequestState) -> bool:
        lst = self._lists.get(self._bucket(state), [])
        i = bisect.bisect_left(lst, state.order_key, key=lambda item: item[0])
        return i < len(lst) and lst[i][1] is state

    def buckets_by_head(self) -> list[list[tuple[tuple[float, ...], RequestState]]]:
        """The bucket lists, the one with the best head first. Callers must not mutate them while iterating."""
        return sorted(self._lists.values(), key=lambda lst: lst[0][0])

    def _bucket(self, state: RequestState) -> int:
        return state.bucket if self.bucketed else 0
