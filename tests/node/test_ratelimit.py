"""Per-source token buckets, with the time passed in."""

from __future__ import annotations

from knarr.node.ratelimit import RateLimiter


def allowed(limiter: RateLimiter, key: object, now: float, times: int) -> int:
    return sum(limiter.allow(key, now) for _ in range(times))


def test_a_new_source_may_burst() -> None:
    limiter = RateLimiter(rate=2.0, burst=5.0)
    assert allowed(limiter, "a", 0.0, 10) == 5
    assert limiter.allow("a", 0.0) is False


def test_tokens_refill_at_the_rate() -> None:
    limiter = RateLimiter(rate=2.0, burst=5.0)
    allowed(limiter, "a", 0.0, 5)
    assert limiter.allow("a", 0.4) is False  # 0.8 of a token
    assert limiter.allow("a", 0.5) is True  # the 1.0th token
    assert limiter.allow("a", 0.5) is False
    assert allowed(limiter, "a", 2.0, 10) == 3  # 1.5 s more: three tokens


def test_the_bucket_never_holds_more_than_the_burst() -> None:
    limiter = RateLimiter(rate=2.0, burst=5.0)
    allowed(limiter, "a", 0.0, 5)
    assert allowed(limiter, "a", 1_000.0, 100) == 5


def test_a_steady_flow_gets_the_rate() -> None:
    limiter = RateLimiter(rate=8.0, burst=1.0)
    # 64 requests a second for 10 s (binary fractions, so the sums are exact): one in
    # eight gets through.
    passed = [i for i in range(640) if limiter.allow("a", i / 64)]
    assert passed == list(range(0, 640, 8))


def test_denied_requests_do_not_cost_tokens() -> None:
    limiter = RateLimiter(rate=1.0, burst=1.0)
    assert limiter.allow("a", 0.0)
    for i in range(1, 10):
        assert not limiter.allow("a", i / 10)  # hammering before the refill
    assert limiter.allow("a", 1.0)


def test_cost_weighs_a_request() -> None:
    limiter = RateLimiter(rate=1.0, burst=10.0)
    assert limiter.allow("a", 0.0, cost=7.0)
    assert not limiter.allow("a", 0.0, cost=4.0)
    assert limiter.allow("a", 0.0, cost=3.0)
    assert not limiter.allow("a", 0.0, cost=0.5)
    assert not limiter.allow("b", 0.0, cost=11.0)  # more than a full bucket: never


def test_sources_are_independent() -> None:
    limiter = RateLimiter(rate=1.0, burst=2.0)
    assert allowed(limiter, ("10.0.0.1", 1), 0.0, 5) == 2
    assert allowed(limiter, ("10.0.0.2", 1), 0.0, 5) == 2


def test_memory_is_bounded_by_capacity() -> None:
    limiter = RateLimiter(rate=1.0, burst=1.0, capacity=3)
    for i in range(100):
        limiter.allow(i, 0.0)
        assert len(limiter) <= 3
    assert len(limiter) == 3


def test_the_least_recently_active_source_is_forgotten_first() -> None:
    limiter = RateLimiter(rate=0.001, burst=1.0, capacity=2)
    assert limiter.allow("old", 0.0)
    assert limiter.allow("busy", 0.0)
    assert not limiter.allow("old", 0.0)  # old is now the most recent
    assert limiter.allow("new", 0.0)  # pushes out busy, not old
    assert not limiter.allow("old", 0.0)  # still remembered: still empty
    # busy was forgotten, so it starts again with a full bucket.
    assert limiter.allow("busy", 0.0)


def test_a_source_idle_until_its_bucket_is_full_again_is_forgotten() -> None:
    limiter = RateLimiter(rate=2.0, burst=4.0)  # empty to full in 2 s
    for i in range(100):
        limiter.allow(("10.0.0.1", i), i / 100)  # 100 sources within a second
    assert len(limiter) == 100
    for step in range(40):  # then one source, busy for 4 s: the rest age out
        limiter.allow("busy", 1.0 + step / 10)
    assert len(limiter) == 1
    # A forgotten source is as it was before it came: a full bucket.
    assert allowed(limiter, ("10.0.0.1", 0), 5.0, 10) == 4


def test_a_source_still_refilling_is_remembered() -> None:
    limiter = RateLimiter(rate=2.0, burst=4.0)
    assert allowed(limiter, "a", 0.0, 10) == 4
    limiter.allow("b", 1.9)  # "a" has 3.8 tokens: not yet full, so not forgotten
    assert allowed(limiter, "a", 1.9, 10) == 3
