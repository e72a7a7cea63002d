from __future__ import annotations

import random
import threading

import pytest

from pcapd.core.config import DeliveryConfig
from uploaders.base import UploadError
from uploaders.retry import RetryPolicy


class Flaky:
    def __init__(self, failures: int, *, retryable: bool = True) -> None:
        self.failures = failures
        self.retryable = retryable
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise UploadError(f"boom {self.calls}", retryable=self.retryable)
        return "done"


def policy(attempts: int = 4, **kw: object) -> tuple[RetryPolicy, list[float]]:
    slept: list[float] = []
    return (
        RetryPolicy(attempts, 1.0, 5.0, sleep=slept.append, rng=random.Random(7), **kw),  # type: ignore[arg-type]
        slept,
    )


def test_succeeds_after_failures_with_capped_growing_waits() -> None:
    retry, slept = policy(attempts=5)
    action = Flaky(4)
    assert retry.run(action, "s3:x") == "done"
    assert action.calls == 5
    caps = [1.0, 2.0, 4.0, 5.0]  # doubles, then held at backoff_max
    assert len(slept) == 4
    for wait, cap in zip(slept, caps, strict=True):
        assert cap / 2 <= wait <= cap


def test_jitter_spreads_waits() -> None:
    retry = RetryPolicy(3, 1.0, 5.0, rng=random.Random(1))
    assert len({round(retry.delay(2), 6) for _ in range(20)}) > 10


def test_gives_up_after_attempts_and_raises_the_last_error() -> None:
    retry, slept = policy(attempts=3)
    action = Flaky(10)
    with pytest.raises(UploadError, match="boom 3"):
        retry.run(action, "s3:x")
    assert action.calls == 3
    assert len(slept) == 2  # no wait after the last attempt


def test_non_retryable_errors_stop_at_once() -> None:
    retry, slept = policy()
    action = Flaky(1, retryable=False)
    with pytest.raises(UploadError, match="boom 1"):
        retry.run(action, "cloudshark:x")
    assert action.calls == 1
    assert slept == []


def test_other_exceptions_are_not_retried() -> None:
    retry, _ = policy()
    calls = []

    def broken() -> None:
        calls.append(1)
        raise KeyError("bug")

    with pytest.raises(KeyError):
        retry.run(broken, "x")
    assert calls == [1]


def test_stop_event_ends_waiting() -> None:
    stop = threading.Event()
    stop.set()
    retry = RetryPolicy(5, 10.0, 10.0, stop=stop)  # would wait 5-10 s if not stopped
    action = Flaky(10)
    with pytest.raises(UploadError):
        retry.run(action, "x")
    assert action.calls == 1


def test_from_config_and_validation() -> None:
    retry = RetryPolicy.from_config(
        DeliveryConfig(attempts=2, backoff_initial=0.1, backoff_max=0.3)
    )
    assert (retry.attempts, retry.backoff_initial, retry.backoff_max) == (2, 0.1, 0.3)
    with pytest.raises(ValueError, match="attempts=0"):
        RetryPolicy(0, 1.0, 2.0)
    with pytest.raises(ValueError, match=r"backoff_max=1\.0"):
        RetryPolicy(1, 2.0, 1.0)
