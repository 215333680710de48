"""Hashrate meters: unbiased, at the Poisson limit, bounded, and consistent across the book.

The statistical tests simulate Poisson share streams with seeded ``random.Random`` generators,
so they are deterministic; the tolerances are chosen so that a correct meter would fail with
probability below 1e-4 for a random choice of seeds. With ``n`` shares expected in a window (one
difficulty) the relative error of one estimate has standard deviation ``1/sqrt(n)``; over ``R``
independent runs:

* the mean relative error has standard deviation ``1/sqrt(n * R)``: n = 300, R = 800 gives
  0.20 %, so the 2 % bound is 10 standard deviations away (p ~ 1e-23);
* the sample standard deviation ``s`` of the relative errors estimates ``1/sqrt(n)`` with a
  relative standard error ``1/sqrt(2 (R - 1))`` = 2.5 % for R = 800 (Poisson(300) is close to
  normal: excess kurtosis 1/300), so the 15 % bound is 6 standard deviations away (p ~ 2e-9).

Three windows, plus the young meter and mixed difficulty: the total false-failure probability is
far below 1e-4.
"""

from __future__ import annotations

import json
import math
import random
import statistics

import pytest

from pool.hashrate import (
    BUCKETS_PER_WINDOW,
    HASHES_PER_DIFF1,
    MIN_WINDOW,
    WINDOWS,
    HashrateBook,
    HashrateMeter,
)

RUNS = 800
EXPECTED_SHARES = 300  # per window, in every statistical test


def poisson_times(rng: random.Random, rate: float, t0: float, t1: float) -> list[float]:
    """Arrival times of a Poisson process of ``rate`` per second in (t0, t1]."""
    times = []
    t = t0 + rng.expovariate(rate)
    while t <= t1:
        times.append(t)
        t += rng.expovariate(rate)
    return times


def relative_errors(
    window: int,
    *,
    seed: int,
    age: tuple[float, float],
    difficulties: tuple[float, ...] = (2.0,),
    epoch: float = 1_700_000_000.0,
) -> tuple[list[float], float]:
    """RUNS independent meters, each fed a Poisson stream and read once.

    The meter starts at ``epoch`` (a realistic Unix time, so bucket indices are large) and is read
    ``age`` seconds later (drawn uniformly from the range, so readings fall anywhere inside a
    bucket). The share rate is chosen so that EXPECTED_SHARES fall in the effective window.
    Returns the relative errors of the hashrate estimate and their theoretical standard deviation.
    """
    rng = random.Random(seed)
    mean_d = statistics.fmean(difficulties)
    mean_d2 = statistics.fmean(d * d for d in difficulties)
    errors = []
    for _ in range(RUNS):
        read_age = rng.uniform(*age)
        effective = min(float(window), read_age)
        rate = EXPECTED_SHARES / effective  # shares per second
        true_hashrate = rate * mean_d * HASHES_PER_DIFF1
        meter = HashrateMeter(epoch, windows=(window,))
        for t in poisson_times(rng, rate, epoch, epoch + read_age):
            meter.add(rng.choice(difficulties), t)
        errors.append(meter.hashrate(window, epoch + read_age) / true_hashrate - 1.0)
    limit = math.sqrt(mean_d2) / mean_d / math.sqrt(EXPECTED_SHARES)
    return errors, limit


def check_unbiased_at_limit(errors: list[float], limit: float) -> None:
    mean = statistics.fmean(errors)
    spread = statistics.stdev(errors)
    assert abs(mean) < 0.02, f"mean relative error {mean:+.4f} (sd of the mean {limit / 28:.4f})"
    assert abs(spread / limit - 1.0) < 0.15, f"spread {spread:.4f} vs Poisson limit {limit:.4f}"


@pytest.mark.parametrize(("window", "seed"), [(60, 1), (300, 2), (3600, 3)])
def test_full_windows_are_unbiased_at_the_poisson_limit(window: int, seed: int) -> None:
    # Read between 1.5 and 2.5 windows after the start: the window is full and the ring has
    # turned over at least once, and the reading falls at a random point inside a bucket.
    errors, limit = relative_errors(window, seed=seed, age=(1.5 * window, 2.5 * window))
    check_unbiased_at_limit(errors, limit)


def test_mixed_difficulties_are_weighted_by_difficulty() -> None:
    # Shares at 0.5 .. 64: the estimate sums difficulties, so it stays unbiased and its spread is
    # sqrt(E[d^2]) / E[d] / sqrt(n) (1.8 times the single-difficulty limit here).
    errors, limit = relative_errors(
        300, seed=4, age=(450.0, 750.0), difficulties=(0.5, 1.0, 4.0, 16.0, 64.0)
    )
    check_unbiased_at_limit(errors, limit)


def test_a_young_meter_is_not_biased_low() -> None:
    # A worker that authorized 30 s ago: the 5-minute window divides by 30 s, not 300 s.
    errors, limit = relative_errors(300, seed=5, age=(29.0, 31.0))
    check_unbiased_at_limit(errors, limit)
    # Dividing by the full window would have reported a tenth of the true rate.
    meter = HashrateMeter(0.0)
    for i in range(30):
        meter.add(1.0, i + 0.5)
    assert meter.effective_window(300, 30.0) == 30.0
    assert meter.hashrate(300, 30.0) == pytest.approx(30 * HASHES_PER_DIFF1 / 30.0)
    assert meter.hashrate(3600, 30.0) == meter.hashrate(60, 30.0) == meter.hashrate(300, 30.0)


def test_the_first_second_is_guarded() -> None:
    meter = HashrateMeter(100.0)
    assert meter.hashrate(60, 100.0) == 0.0
    meter.add(1.0, 100.0)
    assert meter.effective_window(60, 100.0) == MIN_WINDOW
    assert meter.hashrate(60, 100.0) == HASHES_PER_DIFF1 / MIN_WINDOW
    assert math.isfinite(meter.hashrate(60, 99.0))  # a clock a little behind the start


def test_bucket_edges_add_no_bias() -> None:
    # A perfectly regular stream (10 shares/s at difficulty 1): whatever sub-bucket moment the
    # meter is read at, the estimate is within one share of the truth (pro rata oldest bucket);
    # without pro rata it would be off by up to a whole bucket, 1/120 = 0.83 %.
    meter = HashrateMeter(0.0)
    i = 0
    worst = 0.0
    for k in range(400):
        now = 1000.0 + k * 0.0371  # sweeps several buckets of every window at odd offsets
        while (i + 1) / 10.0 <= now:
            i += 1
            meter.add(1.0, i / 10.0)
        for window in (60, 300):
            truth = 10.0 * window
            worst = max(worst, abs(meter.work(window, now) - truth) / truth)
            assert abs(meter.shares(window, now) - truth) <= 1
    assert worst <= 1.0 / 600 + 1e-12  # at most one share of a 1-minute window's 600


def test_window_contents_follow_time() -> None:
    meter = HashrateMeter(0.0)
    meter.add(5.0, 10.0)
    assert meter.work(60, 10.0) == 5.0
    assert meter.work(60, 69.9) == 5.0
    assert meter.work(60, 70.5) == 0.0  # left the 1-minute window
    assert meter.work(300, 70.5) == 5.0
    assert meter.shares(3600, 3000.0) == 1
    assert meter.work(3600, 3700.0) == 0.0
    meter.add(1.0, 5000.0)  # after a long quiet spell the old share is gone everywhere
    assert [meter.work(w, 5000.0) for w in WINDOWS] == [1.0, 1.0, 1.0]
    assert meter.last_share == 5000.0
    assert meter.total_work == 6.0 and meter.total_shares == 2


def test_memory_stays_bounded() -> None:
    meter = HashrateMeter(0.0)
    # An idle meter (a worker that never had a share) holds no buckets at all.
    assert [(len(r.work), len(r.count)) for r in meter._rings.values()] == [(0, 0)] * len(WINDOWS)
    assert meter.hashrate(60, 10.0) == 0.0 and meter.shares(3600, 10.0) == 0
    rng = random.Random(6)
    t = 0.0
    meter.add(1.0, t)
    sizes = [(len(r.work), len(r.count)) for r in meter._rings.values()]
    for _ in range(50_000):
        t += rng.expovariate(5.0)
        meter.add(rng.choice((0.001, 1.0, 1000.0)), t)
    assert [(len(r.work), len(r.count)) for r in meter._rings.values()] == sizes
    assert sizes == [(BUCKETS_PER_WINDOW + 1, BUCKETS_PER_WINDOW + 1)] * len(WINDOWS)


def test_late_share_within_the_ring_counts_and_older_ones_are_ignored() -> None:
    meter = HashrateMeter(0.0)
    meter.add(1.0, 100.0)
    meter.add(2.0, 99.0)  # a share stamped a moment earlier (clocks of two tasks)
    assert meter.work(60, 100.0) == 3.0
    meter.add(4.0, 10.0)  # far older than the 1-minute ring: outside that window anyway
    assert meter.work(60, 100.0) == 3.0
    assert meter.work(300, 100.0) == 7.0


def test_meter_rejects_bad_input() -> None:
    meter = HashrateMeter(0.0)
    with pytest.raises(ValueError, match="no 120 s window"):
        meter.hashrate(120, 1.0)
    with pytest.raises(ValueError):
        meter.add(math.nan, 1.0)
    with pytest.raises(ValueError):
        HashrateMeter(0.0, windows=(0,))
    with pytest.raises(ValueError):
        HashrateMeter(0.0, windows=())


def present(meter: HashrateMeter | None) -> HashrateMeter:
    assert meter is not None
    return meter


def make_book(seed: int) -> tuple[HashrateBook, dict[str, str]]:
    """Three addresses with 1-3 workers each, all started with the book, 20 minutes of shares."""
    rng = random.Random(seed)
    book = HashrateBook(0.0)
    owners = {}
    for a in range(3):
        for w in range(a + 1):
            owners[f"addr{a}.w{w}"] = f"addr{a}"
            book.start_worker(f"addr{a}.w{w}", f"addr{a}", 0.0)
    for name, addr in owners.items():
        difficulty = rng.choice((0.01, 1.0, 512.0))
        for t in poisson_times(rng, rng.uniform(0.05, 2.0), 0.0, 1200.0):
            book.add_share(worker=name, address=addr, difficulty=difficulty, now=t)
    return book, owners


def test_workers_addresses_and_pool_agree() -> None:
    book, owners = make_book(7)
    now = 1200.0
    workers = [present(book.worker(n)) for n in owners]
    addresses = [present(book.address(a)) for a in set(owners.values())]
    for window in WINDOWS:
        pool = book.pool.hashrate(window, now)
        assert math.fsum(m.hashrate(window, now) for m in workers) == pytest.approx(pool, rel=1e-9)
        assert math.fsum(m.hashrate(window, now) for m in addresses) == pytest.approx(
            pool, rel=1e-9
        )
        for addr in set(owners.values()):
            own = [present(book.worker(n)).work(window, now) for n in owners if owners[n] == addr]
            total = present(book.address(addr)).work(window, now)
            assert math.fsum(own) == pytest.approx(total, rel=1e-9)
    assert book.pool.total_shares == sum(m.total_shares for m in workers)


def test_snapshot_is_plain_data() -> None:
    book, owners = make_book(8)
    snap = book.snapshot(1200.0)
    assert json.loads(json.dumps(snap)) == snap
    assert snap["windows"] == list(WINDOWS)
    assert set(snap["workers"]) == set(owners)
    assert snap["workers"]["addr2.w1"]["address"] == "addr2"
    assert snap["addresses"]["addr1"]["workers"] == ["addr1.w0", "addr1.w1"]
    assert set(snap["pool"]["hashrate"]) == {"60", "300", "3600"}
    assert snap["pool"]["hashrate"]["300"] == book.pool.hashrate(300, 1200.0)
    assert snap["pool"]["shares"]["3600"] == book.pool.total_shares


def test_start_worker_is_the_start_of_its_windows() -> None:
    book = HashrateBook(0.0)
    book.start_worker("a.1", "a", 1000.0)
    book.add_share(worker="a.1", address="a", difficulty=3.0, now=1010.0)
    meter = book.worker("a.1")
    assert meter is not None and meter.started == 1000.0
    assert meter.hashrate(300, 1020.0) == 3.0 * HASHES_PER_DIFF1 / 20.0
    # The pool started earlier: its window is older.
    assert book.pool.hashrate(300, 1020.0) == 3.0 * HASHES_PER_DIFF1 / 300.0
    # Authorizing again (a reconnect) keeps the history.
    assert book.start_worker("a.1", "a", 1030.0) is meter
    # A worker seen first through a share starts at that share.
    book.add_share(worker="b.1", address="b", difficulty=1.0, now=1040.0)
    assert present(book.worker("b.1")).started == 1040.0
    assert present(book.address("b")).started == 1040.0


def test_prune_forgets_idle_workers_and_addresses() -> None:
    book = HashrateBook(0.0)
    book.start_worker("a.1", "a", 0.0)
    book.start_worker("a.2", "a", 0.0)
    book.start_worker("b.1", "b", 0.0)
    book.add_share(worker="a.1", address="a", difficulty=1.0, now=100.0)
    book.add_share(worker="a.2", address="a", difficulty=1.0, now=4000.0)
    book.prune(4000.0)  # default: idle for longer than the 1-hour window
    assert book.worker("a.1") is None
    assert book.worker("a.2") is not None
    assert book.worker("b.1") is None and book.address("b") is None
    assert book.address("a") is not None
    book.prune(9000.0, idle_seconds=600.0)
    assert book.workers() == [] and book.addresses() == []
    assert book.pool.total_shares == 2  # the pool meter is never pruned


def test_shares_added_together_count_as_the_same_shares_added_one_by_one() -> None:
    one, many = HashrateMeter(0.0), HashrateMeter(0.0)
    for t in (1.0, 2.0, 30.0, 200.0):
        for d in (0.5, 1.5, 2.0):
            one.add(d, t)
        many.add(4.0, t, count=3)
    for window in WINDOWS:
        assert many.work(window, 250.0) == pytest.approx(one.work(window, 250.0))
        assert many.shares(window, 250.0) == one.shares(window, 250.0)
    assert (many.total_work, many.total_shares) == (one.total_work, one.total_shares) == (16.0, 12)
    with pytest.raises(ValueError):
        many.add(1.0, 251.0, count=0)
