"""Our own retries for cloud requests and parts/chunks, the only layer (the SDKs' retries are off): full-jitter
exponential backoff, a bounded number of attempts, and an optional cancel event that stops waiting."""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
_RANDOM = secrets.SystemRandom()


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))]."""
    return _RANDOM.uniform(0.0, min(cap, base * 2 ** (attempt - 1)))


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """`attempts` tries (the first one included) of anything `is_retryable` accepts."""

    attempts: int
    is_retryable: Callable[[BaseException], bool]
    detail: Callable[[BaseException], str]  # what to log about a failure, e.g. "code=SlowDown"
    label: str  # "s3", "gcs"
    base_delay: float = 0.5
    max_delay: float = 20.0

    def call(self, fn: Callable[[], T], what: str, cancel: threading.Event | None = None) -> T:
        """Run `fn`, retrying retryable failures. Raises the last failure (untranslated)."""
        attempt = 1
        while True:
            try:
                return fn()
            except Exception as e:
                cancelled = cancel is not None and cancel.is_set()
                if attempt >= self.attempts or cancelled or not self.is_retryable(e):
                    raise
                if self.wait(attempt, what, e, cancel) is None:
                    raise
                attempt += 1

    def wait(self, attempt: int, what: str, exc: BaseException, cancel: threading.Event | None = None) -> float | None:
        """Log and sleep before attempt+1. None if `cancel` was set meanwhile."""
        delay = backoff_delay(attempt, self.base_delay, self.max_delay)
        log.warning(
            "%s retry what=%r attempt=%d/%d error=%s %s delay=%.2fs",
            self.label,
            what,
            attempt,
            self.attempts,
            type(exc).__name__,
            self.detail(exc),
            delay,
        )
        if cancel is not None:
            return None if cancel.wait(delay) else delay
        threading.Event().wait(delay)
        return delay
