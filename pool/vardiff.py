"""Per-connection variable difficulty. Pure: no I/O, no clock (``now`` is always passed in).

The model
---------
A share at difficulty ``d`` stands for ``d * 2**32`` expected hashes, so a miner hashing at
``H`` hashes/s finds shares at difficulty ``d`` as a Poisson process of rate
``H / (d * 2**32)``. The pool wants one share per ``target_interval`` seconds (T), so the
ideal difficulty is ``d* = H * T / 2**32``. Everything below is in "difficulty per second"
units, ``h = H / 2**32``, so ``d* = h * T``.

The estimate
------------
The hashrate comes from the sum of share difficulties over elapsed time (not the share count:
shares in one estimate may have been judged at different difficulties, e.g. shares for jobs sent
before a retarget). Within a stretch of constant pool difficulty ``d`` lasting ``t`` seconds with
share difficulties ``d_i``, ``h = sum(d_i) / t``. Stretches at different difficulties are pooled
with inverse-variance weights, which is the same as keeping two running totals:

* ``shares = sum(d_i / d)`` -- each share counted in units of the difficulty the pool had set when
  it arrived (exactly 1 for a share judged at that difficulty), and
* ``exposure = integral dt / d`` -- seconds divided by the difficulty in force,

so that ``h = shares / exposure`` (for a constant ``d`` this is exactly ``sum(d_i) / t``) and the
estimate's relative standard error is ``1 / sqrt(shares)``. The totals are carried across
retargets: on the way up from a start difficulty 1000x too low the early, fast shares all count,
so the difficulty lands on the right value with ~150 shares behind it, not 48. Old data fade
out: when ``shares`` exceeds ``memory_shares`` both totals are scaled down (a count-based
exponential forgetting), and recent data that contradict the history (a miner that changed its
hashrate, a machine that stopped) make the history be dropped (see "Change detection").

When to retarget
----------------
Retargets are considered after ``retarget_shares`` shares (counted in units of the current
difficulty, so shares still arriving at an older difficulty count for what they are) or
``retarget_time`` seconds since the last look, whichever comes first. The difficulty moves to
the estimate only if it differs from the current difficulty by more than the band

    max(ln(1 + tolerance), band_sigmas / sqrt(shares))        (compared on a log scale)

and by at most ``max_step`` (one retarget multiplies or divides by at most 16).

Why this band: the estimate's relative standard error is ``1/sqrt(shares)``. After
``retarget_shares`` = 48 shares it is 14 %, and the statistical part of the band (1.5 standard
errors, 22 %) keeps a freshly started miner from chasing noise; once ~100 shares are pooled the
15 % floor takes over. A miner at the right difficulty is then moved only if the pooled estimate
(standard error 1/sqrt(shares): 5.8 % at 300 shares, 3.2 % at 1000) wanders more than 15 % away
from the value it had when the difficulty was last set, a >2.6-sigma excursion of a slowly
varying average. Measured with the simulation of ``tests/unit/test_vardiff.py`` (5000 runs,
miner at the right rate, minutes 60 to 90): 2.4 % of runs have one retarget in those 30 minutes,
none two, and the difficulty never left 26 % of the ideal. Such a retarget moves to the pooled
estimate, which has at least as much data behind it as the value it replaces, so it is a
refinement rather than noise.

Idle decay
----------
A miner whose difficulty is far too high sends nothing, so there is nothing to average. After
``idle_time`` seconds without a share, every ``on_tick`` computes the estimate *as if one share
had arrived now* -- ``T * (shares + 1) / exposure``, an upper bound on the rate given that no
share came -- and lowers the difficulty to it when that is below the band. As the exposure then
grows by ``dt / d`` with a falling ``d``, the bound falls exponentially, with time constant
``T * (shares + 1)`` (5 s when nothing has arrived yet): a start difficulty 1000x too high is
down to the right value within 50 s of the start, whatever the tick interval. A miner with
hundreds of pooled shares is not disturbed by a quiet spell: one phantom share moves its
estimate by well under the band.

Change detection
----------------
A long pooled history is precise but slow to follow a real change. At every look, the most
recent 1, 2, 4, 8 and 16 looks' stretches (a look is every minute or 48 shares) are tested
against the history before them: given the total number of shares, the number in the recent
stretch is binomial with ``p = recent exposure / total exposure`` if the rate did not change,
which also accounts for the history's own uncertainty. When the exact two-sided binomial tail
is below ``CHANGE_P`` = 2e-8 the history is dropped, and the estimate restarts from the data
after the most likely change point within that stretch (maximum likelihood over the splits).
During a quiet spell, each tick tests the probability that all the history's shares fell before
the spell, ``(1 - p) ** shares``, against ``QUIET_P`` = 1e-10 (at one share per 5 s: about two
minutes of silence); then the idle decay restarts from the quiet spell alone instead of being
held up by the history, so a miner that stopped is below 1/100 of its old difficulty four
minutes later (typically far below it after three). False alarms at a constant rate: at most
5 * 30 * 2e-8 = 3e-6 per 30 minutes for the stretches (Bonferroni; the tests are strongly
correlated) and 360 * 1e-10 for quiet spells. Real changes: a hashrate 4x up or down is followed
within a few minutes (within 1.6x of the new ideal 15 minutes later in 2000 of 2000 simulated
runs).

Limits
------
The difficulty is always a finite positive number clamped to ``[min_difficulty,
max_difficulty]`` and rounded to 4 significant digits (so logs and ``mining.set_difficulty``
carry readable numbers; the error is below 0.05 %). ``suggest`` (``mining.suggest_difficulty``) is
a hint: it sets the difficulty and restarts the estimate, and later retargets may go anywhere in
the port's range, below the suggestion too. ``fix`` (password ``d=...``) pins the difficulty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HASHES_PER_DIFF1 = 2**32

# Two-sided false-alarm probability of one change test (recent stretch vs. history).
CHANGE_P = 2e-8
# P(a quiet spell this long | the history's rate) below which the history is dropped.
QUIET_P = 1e-10
# How many looks (stretches between retarget considerations) are kept for change detection.
_SEGMENTS = 16
_SUFFIXES = (1, 2, 4, 8, 16)
_SIGNIFICANT_DIGITS = 4


@dataclass(frozen=True)
class VardiffConfig:
    """Vardiff policy of one port. Defaults are for ASICs and CPU miners alike."""

    target_interval: float = 5.0
    """Seconds per share wanted: 12 shares a minute is a smooth hashrate graph and little load."""
    retarget_shares: int = 48
    """Consider a retarget after this many shares (relative SE of 48 shares: 14 %; shares at
    another difficulty count in proportion) ..."""
    retarget_time: float = 60.0
    """... or this many seconds since the last look, whichever comes first."""
    tolerance: float = 0.15
    """Never change the difficulty for an estimated error below 15 % (the band's floor)."""
    band_sigmas: float = 1.5
    """The band's statistical part: this many standard errors (1/sqrt(pooled shares))."""
    max_step: float = 16.0
    """A retarget multiplies or divides by at most this (1000x too low is fixed in 3 steps)."""
    idle_time: float = 10.0
    """Idle decay starts after this many seconds without a share (2 target intervals)."""
    memory_shares: float = 1000.0
    """Shares' worth of history kept for the estimate (about 80 minutes at the target rate)."""
    min_difficulty: float = 1e-6
    """Floor: 1e-6 is ~4300 hashes per share, below any real miner's need (a 15 MH/s CPU thread
    wants ~0.02). Ports set their own."""
    max_difficulty: float = 2.0**48
    """Ceiling: 2**48 (~2.8e14) is above Bitcoin's network difficulty (~1.5e14 in 2025) and
    ~10^5 times what a 1 EH/s connection needs at 5 s per share."""
    enabled: bool = True
    """False: the difficulty only changes through ``suggest`` (and ``fix``)."""

    def __post_init__(self) -> None:
        def positive(name: str, value: float) -> None:
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"vardiff {name} must be a positive number, got {value!r}")

        positive("target_interval", self.target_interval)
        positive("retarget_time", self.retarget_time)
        positive("idle_time", self.idle_time)
        positive("min_difficulty", self.min_difficulty)
        positive("max_difficulty", self.max_difficulty)
        positive("memory_shares", self.memory_shares)
        if self.retarget_shares < 1:
            raise ValueError(f"vardiff retarget_shares must be >= 1, got {self.retarget_shares}")
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise ValueError(f"vardiff tolerance must be >= 0, got {self.tolerance!r}")
        if not (math.isfinite(self.band_sigmas) and self.band_sigmas >= 0):
            raise ValueError(f"vardiff band_sigmas must be >= 0, got {self.band_sigmas!r}")
        if not (math.isfinite(self.max_step) and self.max_step > 1):
            raise ValueError(f"vardiff max_step must be > 1, got {self.max_step!r}")
        if self.min_difficulty > self.max_difficulty:
            raise ValueError(
                f"vardiff min_difficulty {self.min_difficulty} > max_difficulty "
                f"{self.max_difficulty}"
            )


class Vardiff:
    """The difficulty policy of one connection. Feed it accepted shares and periodic ticks."""

    _shares: float  # pooled shares, each in units of the difficulty set when it arrived
    _exposure: float  # pooled integral of dt / difficulty
    _seg_shares: float  # the same two totals for the stretch since the last look
    _seg_exposure: float
    # The last looks' stretches, for change detection (a list trimmed to _SEGMENTS: an empty
    # list is 56 bytes where an empty deque is ~600, and there is one per connection).
    _segments: list[tuple[float, float]]
    _segments_scale: float  # forgetting not yet applied to _segments (see _scaled_segments)
    _quiet_exposure: float  # integral of dt / difficulty since the last share
    _last_share: float
    _look_time: float
    _look_shares: float

    def __init__(self, config: VardiffConfig, start_difficulty: float, now: float) -> None:
        self.config = config
        if math.isnan(start_difficulty):
            raise ValueError("start difficulty must be a number")
        self._difficulty = self.clamp(start_difficulty)
        self._fixed = False
        self._last = now
        self._restart(now)

    # -- public ---------------------------------------------------------------------------------
    @property
    def difficulty(self) -> float:
        """The current target difficulty: what the pool sends with the next job."""
        return self._difficulty

    @property
    def fixed(self) -> bool:
        """True once ``fix`` pinned the difficulty."""
        return self._fixed

    @property
    def retargeting(self) -> bool:
        """Whether shares and ticks may still change the difficulty."""
        return self.config.enabled and not self._fixed

    @property
    def estimated_hashrate(self) -> float | None:
        """Hashes per second behind the current estimate, or None before the first share."""
        if self._shares < 1.0 or self._exposure <= 0.0:
            return None
        return self._shares / self._exposure * HASHES_PER_DIFF1

    def clamp(self, d: float) -> float:
        """``d`` limited to [min_difficulty, max_difficulty]; inf gives the max, <= 0 the min."""
        if math.isnan(d):
            raise ValueError("difficulty is NaN")
        return min(max(d, self.config.min_difficulty), self.config.max_difficulty)

    def on_share(self, difficulty: float, now: float) -> float | None:
        """An accepted share, judged at ``difficulty``. Returns the new difficulty or None."""
        if not (math.isfinite(difficulty) and difficulty > 0):
            return None
        self._advance(now)
        weight = difficulty / self._difficulty
        self._shares += weight
        self._seg_shares += weight
        self._quiet_exposure = 0.0
        self._last_share = max(self._last_share, now)
        self._look_shares += weight
        self._forget()
        if (
            self._look_shares >= self.config.retarget_shares
            or now - self._look_time >= self.config.retarget_time
        ):
            return self._look(now)
        return None

    def on_tick(self, now: float) -> float | None:
        """Periodic call (every few seconds): idle decay and time-based retargets."""
        self._advance(now)
        if now - self._last_share >= self.config.idle_time:
            new = self._idle(now)
            if new is not None:
                return new
        if now - self._look_time >= self.config.retarget_time:
            return self._look(now)
        return None

    def suggest(self, difficulty: float, now: float) -> float:
        """``mining.suggest_difficulty``: set the (clamped) difficulty and restart the estimate.

        A hint, not a floor: later retargets may go below it. Ignored after ``fix`` and for a
        value that is not a positive finite number. Returns the difficulty in force.
        """
        if self._fixed or not (math.isfinite(difficulty) and difficulty > 0):
            return self._difficulty
        self._advance(now)
        self._difficulty = self._round(self.clamp(difficulty))
        self._restart(now)
        return self._difficulty

    def fix(self, difficulty: float) -> None:
        """A fixed difficulty (password ``d=...``): clamp it and stop retargeting."""
        if not (math.isfinite(difficulty) and difficulty > 0):
            raise ValueError(f"fixed difficulty must be a positive number, got {difficulty!r}")
        self._difficulty = self._round(self.clamp(difficulty))
        self._fixed = True

    # -- internals ------------------------------------------------------------------------------
    def _restart(self, now: float) -> None:
        """Forget the estimate: the next shares start a fresh one."""
        self._shares = 0.0
        self._exposure = 0.0
        self._seg_shares = 0.0
        self._seg_exposure = 0.0
        self._segments = []
        self._segments_scale = 1.0
        self._quiet_exposure = 0.0
        self._last_share = now
        self._look_time = now
        self._look_shares = 0.0

    def _advance(self, now: float) -> None:
        dt = now - self._last
        if dt <= 0.0:
            return
        self._last = now
        x = dt / self._difficulty
        self._exposure += x
        self._seg_exposure += x
        self._quiet_exposure += x

    def _forget(self) -> None:
        """Count-based exponential forgetting: keep at most ``memory_shares`` of history."""
        if self._shares <= self.config.memory_shares:
            return
        f = self.config.memory_shares / self._shares
        self._shares *= f
        self._exposure *= f
        self._seg_shares *= f
        self._seg_exposure *= f
        self._segments_scale *= f  # applied to the stored stretches when they are next used

    def _scaled_segments(self) -> list[tuple[float, float]]:
        """The stored stretches with the forgetting applied since they were last touched."""
        scale = self._segments_scale
        if scale != 1.0:
            self._segments = [(n * scale, x * scale) for n, x in self._segments]
            self._segments_scale = 1.0
        return self._segments

    def _estimate(self, phantom: float = 0.0) -> float | None:
        """Ideal difficulty ``T * shares / exposure`` (with ``phantom`` extra shares)."""
        shares = self._shares + phantom
        if shares <= 0.0 or self._exposure <= 0.0:
            return None
        return self.config.target_interval * shares / self._exposure

    def _band(self) -> float:
        stat = self.config.band_sigmas / math.sqrt(max(self._shares, 1.0))
        return max(math.log1p(self.config.tolerance), stat)

    def _look(self, now: float) -> float | None:
        """Retarget time: close the stretch, test it against history, maybe move."""
        self._look_time = now
        self._look_shares = 0.0
        segments = self._scaled_segments()
        segments.append((self._seg_shares, self._seg_exposure))
        if len(segments) > _SEGMENTS:
            del segments[0]
        self._seg_shares = 0.0
        self._seg_exposure = 0.0
        if not self.retargeting:  # nothing to decide: the change test's work would be wasted
            return None
        self._detect_change()
        estimate = self._estimate() if self._shares >= 1.0 else self._estimate(phantom=1.0)
        if estimate is None or abs(math.log(estimate / self._difficulty)) <= self._band():
            return None
        step = self.config.max_step
        estimate = min(max(estimate, self._difficulty / step), self._difficulty * step)
        return self._set(estimate, now)

    def _idle(self, now: float) -> float | None:
        """No share for ``idle_time``: lower to the rate bound "one share arrived just now"."""
        history = self._exposure - self._quiet_exposure
        # P(no share in the quiet spell | the history's rate), the history's own uncertainty
        # included: the binomial probability that all of the shares fell before the spell.
        if (
            self._shares >= 1.0
            and history > 0.0
            and (history / self._exposure) ** self._shares < QUIET_P
        ):
            self._drop_history(0.0, self._quiet_exposure)
        if not self.retargeting:
            return None
        bound = self._estimate(phantom=1.0)
        if bound is None or bound >= self._difficulty / (1.0 + self.config.tolerance):
            return None
        return self._set(bound, now)

    def _detect_change(self) -> None:
        """Drop the history when a recent stretch contradicts it (see module docstring)."""
        segments = list(self._scaled_segments())
        suffixes: list[tuple[float, float]] = []  # (shares, exposure) of the last k stretches
        recent_n = recent_x = 0.0
        for n, x in reversed(segments):
            recent_n += n
            recent_x += x
            suffixes.append((recent_n, recent_x))
            if len(suffixes) not in _SUFFIXES:
                continue
            old_n = self._shares - recent_n
            old_x = self._exposure - recent_x
            if old_n < 1.0 or old_x <= 0.0 or recent_x <= 0.0:
                return
            if change_p_value(recent_n, recent_x, old_n, old_x) < CHANGE_P:
                # Keep the data after the most likely change point within this suffix (a miner
                # that stopped a minute ago keeps the empty minute, not the busy ones before).
                keep = max(suffixes, key=self._split_likelihood)
                self._drop_history(*keep)
                return

    def _split_likelihood(self, recent: tuple[float, float]) -> float:
        """Log-likelihood of "one rate before, another since" for a split at ``recent``."""
        n, x = recent
        old_n, old_x = self._shares - n, self._exposure - x
        if x <= 0.0 or old_x <= 0.0:
            return -math.inf
        return _xlogy(n, n / x) + _xlogy(old_n, old_n / old_x)

    def _drop_history(self, shares: float, exposure: float) -> None:
        self._shares = shares
        self._exposure = exposure
        self._segments.clear()
        self._segments_scale = 1.0

    def _set(self, difficulty: float, now: float) -> float | None:
        new = self._round(self.clamp(difficulty))
        if new == self._difficulty:
            return None
        self._difficulty = new
        self._look_time = now
        self._look_shares = 0.0
        return new

    def _round(self, d: float) -> float:
        """4 significant digits, kept inside the clamp range."""
        rounded = float(f"{d:.{_SIGNIFICANT_DIGITS - 1}e}")
        return min(max(rounded, self.config.min_difficulty), self.config.max_difficulty)


def _xlogy(a: float, b: float) -> float:
    return a * math.log(b) if a > 0.0 else 0.0


# -- the change test: exact conditional binomial, via the regularized incomplete beta function --
def change_p_value(recent: float, recent_exposure: float, old: float, old_exposure: float) -> float:
    """Two-sided p-value that ``recent`` shares in ``recent_exposure`` and ``old`` shares in
    ``old_exposure`` come from the same Poisson rate.

    Given the total ``n = recent + old``, the recent count is Binomial(n, p) with
    ``p = recent_exposure / (recent_exposure + old_exposure)`` whatever the common rate, so the
    test also accounts for the uncertainty of the old rate (treating it as known would make a
    short history look far more certain than it is). Share counts may be fractional (shares are
    weighted by difficulty); the incomplete beta function interpolates smoothly between integers.
    """
    n = recent + old
    if n <= 0.0 or recent_exposure <= 0.0 or old_exposure <= 0.0:
        return 1.0
    p = recent_exposure / (recent_exposure + old_exposure)
    # P(K >= k) = I_p(k, n - k + 1);  P(K <= k) = I_{1-p}(n - k, k + 1)
    high = 1.0 if recent <= 0.0 else _beta_inc(recent, old + 1.0, p)
    low = 1.0 if old <= 0.0 else _beta_inc(old, recent + 1.0, 1.0 - p)
    return min(1.0, 2.0 * min(low, high))


def _beta_inc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b), a, b > 0."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    """Lentz's continued fraction for the incomplete beta function."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (tiny if abs(d) < tiny else d)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (tiny if abs(d) < tiny else d)
        c = 1.0 + aa / c
        c = tiny if abs(c) < tiny else c
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (tiny if abs(d) < tiny else d)
        c = 1.0 + aa / c
        c = tiny if abs(c) < tiny else c
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h
