"""The one retry policy for Icareus calls, built from `icareus.retry`: transient failures only,
stop after `max_attempts` or when the next attempt would start past `max_total_seconds`,
exponential backoff with jitter, and an answer's Retry-After as the floor of the wait."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)

from icareus_bridge.config import RetrySettings
from icareus_bridge.icareus.errors import TransientIcareusError

OnRetry = Callable[[str], None]


class RetryAfterFloor:
    """tenacity wait: the backoff, but never less than the failed answer's Retry-After."""

    def __init__(self, backoff: Callable[[RetryCallState], float]) -> None:
        self._backoff = backoff

    def __call__(self, state: RetryCallState) -> float:
        wait = self._backoff(state)
        outcome = state.outcome
        if outcome is not None and outcome.failed:
            exc = outcome.exception()
            if isinstance(exc, TransientIcareusError) and exc.retry_after is not None:
                wait = max(wait, exc.retry_after)
        return wait


# tenacity 9.2 renamed `initial` to `multiplier` (the old name warns); accept both.
_HAS_MULTIPLIER = "multiplier" in inspect.signature(wait_exponential_jitter).parameters


def _exponential_jitter(first: float, most: float, jitter: float) -> wait_exponential_jitter:
    if _HAS_MULTIPLIER:
        return wait_exponential_jitter(multiplier=first, max=most, jitter=jitter)
    return wait_exponential_jitter(initial=first, max=most, jitter=jitter)


def build_retrying(
    settings: RetrySettings, on_retry: OnRetry | None = None, *, elapsed: float = 0.0
) -> AsyncRetrying:
    """A fresh `AsyncRetrying` for one call. `on_retry(reason)` runs before each retry's wait,
    with the transient reason (connect, timeout, reset, throttled, server_error, bad_body).
    `elapsed`: seconds the call already spent before tenacity took over; it counts against
    the time budget."""

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is None or state.outcome is None:
            return
        exc = state.outcome.exception()
        if isinstance(exc, TransientIcareusError):
            on_retry(exc.reason)

    # stop_before_delay: a wait that would end past the budget is not started at all, so the
    # budget bounds the whole call, Retry-After included.
    return AsyncRetrying(
        retry=retry_if_exception_type(TransientIcareusError),
        stop=stop_after_attempt(settings.max_attempts)
        | stop_before_delay(max(0.0, settings.max_total_seconds - elapsed)),
        wait=RetryAfterFloor(
            _exponential_jitter(
                settings.initial_backoff_seconds,
                settings.max_backoff_seconds,
                settings.jitter_seconds,
            )
        ),
        before_sleep=before_sleep,
        reraise=True,
    )


__all__ = ["OnRetry", "RetryAfterFloor", "build_retrying"]
