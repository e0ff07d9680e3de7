"""The agent's one backoff rule: the n-th failure in a row waits ``base_s * 2**(n-1)``
seconds, at most ``max_s``. The link (reconnecting to the service), the executor
(retrying a failed operation) and staging (retrying a prefetch) each use it with their
own base and ceiling."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    base_s: float
    max_s: float

    def delay_s(self, failures: int) -> float:
        """The wait after ``failures`` failures in a row (0 failures: no wait)."""
        if failures <= 0:
            return 0.0
        return min(self.max_s, self.base_s * 2 ** (failures - 1))


class Retries:
    """Failures in a row per key (a workspace, a digest) and when each may be retried."""

    def __init__(self, backoff: Backoff, clock: Callable[[], float] = time.monotonic) -> None:
        self.backoff = backoff
        self.clock = clock
        self._lock = threading.Lock()
        self._by_key: dict[str, tuple[int, float]] = {}  # key → (failures, not before)

    def failed(self, key: str) -> tuple[int, float]:
        """Count one more failure of ``key``; returns (failures in a row, delay in s)."""
        with self._lock:
            count = self._by_key.get(key, (0, 0.0))[0] + 1
            delay = self.backoff.delay_s(count)
            self._by_key[key] = (count, self.clock() + delay)
        return count, delay

    def waiting(self, key: str) -> bool:
        """Whether ``key`` failed and its retry time has not come yet."""
        with self._lock:
            count, not_before = self._by_key.get(key, (0, 0.0))
        return count > 0 and self.clock() < not_before

    def forget(self, key: str) -> None:
        with self._lock:
            self._by_key.pop(key, None)
