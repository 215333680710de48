"""PPLNS maths and the scheme registry: hand-checked vectors, window edges, properties."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from pool.bitcoin.target import DIFF1_TARGET
from pool.ledger.pplns import pplns_credits, prune_before, split_reward, window_weights
from pool.ledger.pps import Scheme
from pool.ledger.schemes import NAMES, BlockOwner, get_scheme


def test_hand_checked_split() -> None:
    # window 10 units; shares (oldest first): a4 b4 a4 b2 -> from the end: b2, a4, b4 (=10).
    shares = [("a", 4.0), ("b", 4.0), ("a", 4.0), ("b", 2.0)]
    split = pplns_credits(shares, 10, 1000, 0)
    assert split.credits == {"b": 600, "a": 400}
    assert split.fee == 0 and split.remainder == 0
    assert split.window == 10 and split.shares == 3


def test_straddling_share_counts_partly() -> None:
    # window 7: b2 + a4 = 6, the next b4 straddles: 1 of its 4 units counts.
    shares = [("a", 4.0), ("b", 4.0), ("a", 4.0), ("b", 2.0)]
    weights, count = window_weights(shares, 7)
    assert weights == {"b": Fraction(3), "a": Fraction(4)}
    assert count == 3
    split = pplns_credits(shares, 7, 700, 0)
    assert split.credits == {"b": 300, "a": 400}


def test_fee_and_rounding_go_to_the_pool() -> None:
    # three equal keys share 100 units at 1 %: net 99, 33 each, nothing left.
    shares = [("a", 1.0), ("b", 1.0), ("c", 1.0)]
    split = pplns_credits(shares, 3, 100, 100)
    assert split.credits == {"a": 33, "b": 33, "c": 33}
    assert (split.fee, split.remainder) == (1, 0)
    # 100 units, no fee, three keys: 33 each, 1 unit of rounding to the pool.
    split = pplns_credits(shares, 3, 100, 0)
    assert split.credits == {"a": 33, "b": 33, "c": 33}
    assert (split.fee, split.remainder, split.pool) == (0, 1, 1)
    # a fee whose net is fractional: 101 * 0.99 = 99.99 -> fee 2 (101 - 99)
    split = pplns_credits([("a", 1.0)], 1, 101, 100)
    assert split.credits == {"a": 99} and split.fee == 2 and split.remainder == 0


def test_window_larger_than_all_shares_pays_them_all() -> None:
    shares = [("a", 1.0), ("b", 3.0)]
    split = pplns_credits(shares, 1_000_000, 400, 0)
    assert split.credits == {"a": 100, "b": 300}
    assert split.window == 4 and split.shares == 2


def test_block_share_at_least_the_window_takes_it_all() -> None:
    shares = [("a", 5.0), ("b", 50.0)]
    split = pplns_credits(shares, 10, 1000, 0)
    assert split.credits == {"b": 1000}
    assert split.shares == 1


def test_window_exactly_on_a_share_boundary() -> None:
    shares = [("a", 2.0), ("b", 3.0), ("c", 5.0)]
    split = pplns_credits(shares, 8, 800, 0)
    assert split.credits == {"c": 500, "b": 300}  # "a" wholly outside
    assert split.shares == 2


def test_fractional_difficulties_are_exact() -> None:
    shares = [("a", 0.1), ("b", 0.2)]  # binary fractions, summed exactly
    weights, _ = window_weights(shares, 1)
    assert sum(weights.values()) == Fraction(0.1) + Fraction(0.2)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="window"):
        pplns_credits([("a", 1.0)], 0, 10, 0)
    with pytest.raises(ValueError, match="difficulty"):
        pplns_credits([("a", -1.0)], 5, 10, 0)
    with pytest.raises(ValueError, match="fee"):
        pplns_credits([("a", 1.0)], 5, 10, 10_001)
    with pytest.raises(ValueError, match="negative"):
        split_reward({"a": Fraction(1)}, -1, 0)


def test_empty_log_leaves_everything_to_the_pool() -> None:
    split = pplns_credits([], 5, 1000, 100)
    assert split.credits == {} and split.fee + split.remainder == 1000


def test_properties_random() -> None:
    rng = random.Random(14)
    for _ in range(300):
        shares = [
            (rng.choice("abcdef"), rng.choice([1.0, 2.0, 0.5, 1024.0, rng.random() + 0.01]))
            for _ in range(rng.randint(1, 60))
        ]
        window = rng.choice([1, 3, 10, 100, 5000, Fraction(7, 3)])
        reward = rng.randint(0, 10**15)
        fee = rng.randint(0, 10_000)
        split = pplns_credits(shares, window, reward, fee)
        assert sum(split.credits.values()) + split.fee + split.remainder == reward
        assert sum(split.credits.values()) <= reward
        assert 0 <= split.remainder < max(1, len(split.credits))
        assert split.window == min(Fraction(window), sum(Fraction(d) for _, d in shares))
        # independent: each key's exact share of the window, rounded down
        left = Fraction(window)
        mine: dict[str, Fraction] = {}
        for key, d in reversed(shares):
            if left <= 0:
                break
            take = min(Fraction(d), left)
            mine[key] = mine.get(key, Fraction(0)) + take
            left -= take
        net = Fraction(reward * (10_000 - fee), 10_000)
        total = sum(mine.values())
        assert split.credits == {k: int(net * w / total) for k, w in mine.items()}


def test_prune_keeps_every_share_a_future_window_can_reach() -> None:
    diffs = [1.0, 1.0, 4.0, 2.0, 3.0]
    # newest 3 + 2 = 5 < 6, + 4 = 9 >= 6: index 2 (the 4) is the oldest still needed
    assert prune_before(diffs, 6) == 2
    assert prune_before(diffs, 5) == 3
    assert prune_before(diffs, 100) == 0
    assert prune_before([], 5) == 0
    # whatever share comes next, the window ending at it never reaches before the kept ones
    rng = random.Random(3)
    for _ in range(200):
        diffs = [rng.choice([0.5, 1.0, 2.0, 8.0]) for _ in range(rng.randint(1, 30))]
        window = rng.choice([1, 2, 5, 17])
        keep = prune_before(diffs, window)
        nxt = rng.choice([0.5, 1.0, 2.0])
        full = [(str(i), d) for i, d in enumerate(diffs)] + [("new", nxt)]
        pruned = full[keep:]
        assert window_weights(full, window)[0] == window_weights(pruned, window)[0]
        if keep > 0:  # and one share fewer would change it (the kept ones are all needed)
            assert window_weights(full[keep - 1 :], window) == window_weights(pruned, window)


def test_registry() -> None:
    assert set(NAMES) == {"pps", "fpps", "pplns", "solo"}
    for name in NAMES:
        assert get_scheme(name).name == name
        assert get_scheme(Scheme(name)).scheme is Scheme(name)
    with pytest.raises(ValueError, match="unknown payout scheme 'prop'"):
        get_scheme("prop")
    assert get_scheme("pplns").block_owner is BlockOwner.WINDOW
    assert get_scheme("solo").block_owner is BlockOwner.FINDER
    assert get_scheme("pps").pool_carries_variance
    assert not get_scheme("pplns").pool_carries_variance
    # share values: PPS/FPPS credit, PPLNS/SOLO 0
    target = DIFF1_TARGET  # network difficulty 1: a share of 0.5 is worth half a block
    pps = get_scheme("pps").share_value(0.5, target, 1000, 1500, 0)
    fpps = get_scheme("fpps").share_value(0.5, target, 1000, 1500, 0)
    assert pps.credit == 500_000_000 and fpps.credit == 750_000_000
    for name in ("pplns", "solo"):
        value = get_scheme(name).share_value(0.5, target, 1000, 1500, 0)
        assert (value.gross, value.credit, value.fee) == (0, 0, 0)


def test_non_binary_fractions_and_integers_mix_exactly() -> None:
    # difficulties 1/3, 2/7, 5 (int) and 0.5; window 5 + 1/2 + 2/7 + 1/10 of the 1/3
    shares = [("a", Fraction(1, 3)), ("b", Fraction(2, 7)), ("c", 0.5), ("d", 5)]
    window = Fraction(5) + Fraction(1, 2) + Fraction(2, 7) + Fraction(1, 10)
    weights, count = window_weights(shares, window)
    assert weights == {"d": 5, "c": Fraction(1, 2), "b": Fraction(2, 7), "a": Fraction(1, 10)}
    assert count == 4
    with pytest.raises(ValueError, match="difficulty"):
        window_weights([("a", float("inf"))], 1)
    with pytest.raises(ValueError, match="difficulty"):
        window_weights([("a", float("nan"))], 1)
