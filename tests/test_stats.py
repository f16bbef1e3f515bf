"""Confidence intervals and the paired t-test against published values."""

import math

import pytest

from mtljax.stats import mean_ci, paired_t_test, t_quantile

# Student (1908) / Cushny & Peebles (1905): extra hours of sleep of 10 patients under two drugs,
# R's `sleep` data set, group 1 then group 2, same patients in the same order.
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def test_paired_t_test_on_the_sleep_data():
    # R: t.test(extra ~ group, data = sleep, paired = TRUE)
    #    t = -4.0621, df = 9, p-value = 0.002833
    test = paired_t_test(SLEEP_1, SLEEP_2)
    assert test.statistic == pytest.approx(-4.0621, abs=1e-4)
    assert test.df == 9
    assert test.pvalue == pytest.approx(0.002833, abs=1e-6)
    # swapping the samples flips the sign of t and keeps p
    swapped = paired_t_test(SLEEP_2, SLEEP_1)
    assert swapped.statistic == pytest.approx(4.0621, abs=1e-4) and swapped.pvalue == pytest.approx(test.pvalue)


def test_confidence_interval_of_the_sleep_differences():
    # the same R output: mean difference -1.58, 95 percent confidence interval -2.4598858 -0.7001142
    diffs = [a - b for a, b in zip(SLEEP_1, SLEEP_2)]
    s = mean_ci(diffs)
    assert s.n == 10 and s.mean == pytest.approx(-1.58)
    assert s.ci_low == pytest.approx(-2.4598858, abs=1e-7)
    assert s.ci_high == pytest.approx(-0.7001142, abs=1e-7)


@pytest.mark.parametrize("df, q, table", [(1, 0.975, 12.706), (2, 0.975, 4.303), (9, 0.975, 2.262),
                                          (30, 0.975, 2.042), (9, 0.995, 3.250)])
def test_t_quantiles_match_a_printed_table(df, q, table):
    # two-sided 95 % / 99 % critical values of Student's t, as printed to three decimals
    assert t_quantile(q, df) == pytest.approx(table, abs=5e-4)


def test_one_run_has_no_interval_and_no_test():
    s = mean_ci([0.25])
    assert (s.n, s.mean, s.std, s.ci_low, s.ci_high) == (1, 0.25, None, None, None)
    assert paired_t_test([0.25], [0.5]) is None


def test_identical_pairs_have_no_p_value():
    assert math.isnan(paired_t_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]).pvalue)
    with pytest.raises(ValueError, match="paired"):
        paired_t_test([1.0, 2.0], [1.0, 2.0, 3.0])
