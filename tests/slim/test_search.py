"""The (budget, preference) → widths search: monotone in each task's preference, within budget,
the widest encoder that fits, scale-invariant in the preference, clear errors for bad input."""

import numpy as np
import pytest

from mtljax.models.slim.flops import FlopsTable
from mtljax.models.slim.search import decoder_indices, parse_budget, parse_preference, search

W = (0.25, 0.5, 0.75, 1.0)


def random_table(rng, num_tasks):
    """Costs increasing with width; decoders of very different sizes, like dense vs classification."""
    enc = np.cumsum(rng.uniform(1, 10, len(W))) * 100
    decoders = {f"t{i}": dict(zip(W, np.cumsum(rng.uniform(0.1, 1, len(W))) * rng.choice([1, 10, 100])))
                for i in range(num_tasks)}
    return FlopsTable(dict(zip(W, enc.tolist())), {k: {w: float(c) for w, c in v.items()} for k, v in decoders.items()})


def test_raising_a_tasks_preference_never_shrinks_its_decoder():
    rng = np.random.default_rng(0)
    for _ in range(300):
        num_tasks = int(rng.integers(2, 6))
        table = random_table(rng, num_tasks)
        budget = rng.uniform(table.smallest, table.full * 1.05)
        p = rng.dirichlet(np.ones(num_tasks)) * rng.integers(0, 2, num_tasks)
        p[rng.integers(num_tasks)] += 0.1
        t = int(rng.integers(num_tasks))
        config, flops = search(table, budget, p)
        for factor in (1.01, 1.5, 3.0, 100.0):
            q = p.copy()
            q[t] = q[t] * factor + 0.05
            raised, _ = search(table, budget, q)
            assert raised.decoder(f"t{t}") >= config.decoder(f"t{t}")


def test_search_respects_the_budget_and_gives_the_encoder_the_rest():
    rng = np.random.default_rng(1)
    for _ in range(300):
        table = random_table(rng, 3)
        budget = rng.uniform(table.smallest, table.full * 1.2)
        config, flops = search(table, budget, rng.uniform(0, 1, 3) + 1e-3)
        assert flops == table.total(config) <= budget
        wider = [w for w in W if w > config.encoder]
        if wider:  # the next encoder width would not fit with these decoders
            spent = flops - table.encoder[config.encoder]
            assert table.encoder[wider[0]] + spent > budget
    table = random_table(rng, 3)
    assert search(table, table.full, [1, 1, 1])[0] == table.extreme(True)
    assert search(table, table.smallest, [5, 1, 0])[0] == table.extreme(False)


def test_preference_maps_to_decoder_widths_by_ratio():
    np.testing.assert_array_equal(decoder_indices(np.array([1.0, 0.0, 0.5, 0.2]), 4), [3, 0, 2, 1])
    rng = np.random.default_rng(2)
    table = random_table(rng, 3)
    for _ in range(20):
        p, budget = rng.uniform(0, 1, 3) + 1e-3, rng.uniform(table.smallest, table.full)
        assert search(table, budget, p) == search(table, budget, 7.5 * p)


def test_bad_budget_and_preference_are_one_line_errors_naming_the_argument():
    table = random_table(np.random.default_rng(3), 2)
    cases = [((table.smallest * 0.99, [1, 1]), "budget .* is below the smallest configuration"),
             ((table.full, [1, 1, 1]), "preference has 3 entries, the model has 2 tasks"),
             ((table.full, [1, -0.5]), "preference entries must be finite and >= 0"),
             ((table.full, [0, 0]), "preference is all zeros"),
             ((table.full, "ab"), "preference must be")]
    for (budget, pref), match in cases:
        with pytest.raises(ValueError, match=match) as err:
            search(table, budget, pref)
        assert "\n" not in str(err.value)
    assert parse_budget("50%", table) == pytest.approx(0.5 * table.full)
    assert parse_budget("1.5e3", table) == 1500.0
    for bad in ("fifty", "-5%", "0%", "nan%"):
        with pytest.raises(ValueError, match="^budget must be"):
            parse_budget(bad, table)
    assert parse_budget("100%", table) == pytest.approx(table.full)
    with pytest.raises(ValueError, match=r"^budget must be in \(0, 100%\] of the full network's FLOPs, got '150%'"):
        parse_budget("150%", table)
    with pytest.raises(ValueError, match="^budget .* FLOPs per example is above the full network's"):
        parse_budget(str(table.full * 1.5), table)
    assert parse_preference("1, 0.5,2") == [1.0, 0.5, 2.0]
    with pytest.raises(ValueError, match="^preference must be comma-separated"):
        parse_preference("1;2")
