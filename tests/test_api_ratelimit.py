from tokenapi.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ratelimit__allows_limit_then_refuses_with_integer_retry() -> None:
    clock = Clock()
    limiter = RateLimiter(3, 60, clock=clock)
    assert [limiter.hit("a") for _ in range(3)] == [None, None, None]
    retry = limiter.hit("a")
    assert isinstance(retry, int)
    assert retry == 20


def test_ratelimit__keys_are_independent() -> None:
    limiter = RateLimiter(1, 60, clock=Clock())
    assert limiter.hit("a") is None
    assert limiter.hit("b") is None
    assert limiter.hit("a") is not None


def test_ratelimit__frees_a_slot_after_the_interval() -> None:
    clock = Clock()
    limiter = RateLimiter(2, 10, clock=clock)
    limiter.hit("a")
    limiter.hit("a")
    assert limiter.hit("a") == 5
    clock.now += 5
    assert limiter.hit("a") is None
    assert limiter.hit("a") is not None


def test_ratelimit__refused_hits_do_not_extend_the_wait() -> None:
    clock = Clock()
    limiter = RateLimiter(1, 10, clock=clock)
    limiter.hit("a")
    for _ in range(50):
        assert limiter.hit("a") == 10
    clock.now += 10
    assert limiter.hit("a") is None


def test_ratelimit__check_does_not_count() -> None:
    limiter = RateLimiter(1, 10, clock=Clock())
    assert limiter.check("a") is None
    assert limiter.check("a") is None
    assert limiter.hit("a") is None
    assert limiter.check("a") == 10


def test_ratelimit__fractional_wait_rounds_up_to_at_least_one() -> None:
    limiter = RateLimiter(100, 1, clock=Clock())
    for _ in range(100):
        limiter.hit("a")
    assert limiter.hit("a") == 1


def test_ratelimit__memory_is_bounded() -> None:
    clock = Clock()
    limiter = RateLimiter(5, 60, max_keys=100, clock=clock)
    for i in range(10_000):
        limiter.hit(f"k{i}")
    assert len(limiter) <= 100


def test_ratelimit__idle_keys_expire() -> None:
    clock = Clock()
    limiter = RateLimiter(5, 60, clock=clock)
    for i in range(50):
        limiter.hit(f"k{i}")
    clock.now += 61
    limiter.hit("fresh")
    assert len(limiter) == 1
