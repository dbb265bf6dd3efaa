"""IMWG response categories (popkpd._response) on hand-built M-protein trajectories."""

import numpy as np
import pytest

from popkpd._response import RESPONSE_CATEGORIES, imwg_response

TIMES = np.arange(0.0, 169.0, 1.0)
VISITS = np.arange(28.0, 169.0, 28.0)  # 6 monthly visits


def at_visits(values, baseline=20.0):
    """A trajectory equal to ``values`` at VISITS (piecewise linear, baseline at day 0)."""
    return np.interp(TIMES, np.r_[0.0, VISITS], np.r_[baseline, values])


def best(*trajectories, **kw):
    r = imwg_response(TIMES, np.stack(trajectories), visits=VISITS, **kw)
    return [RESPONSE_CATEGORIES[i] for i in np.asarray(r.best)], r


def test_categories_by_ratio_to_baseline():
    names, r = best(
        at_visits([15, 14, 14, 14, 14, 14]),      # 0.70-0.75: MR
        at_visits([9, 8, 8, 8, 8, 8]),            # <= 0.5: PR
        at_visits([1.9, 1.5, 1, 1, 1, 1]),        # <= 0.1: VGPR
        at_visits([1, 0.01, 0.01, 0.01, 0.01, 0.01]),  # < 0.05 g/L: CR
        at_visits([19, 18, 19, 18, 19, 19]),      # SD
    )
    assert names == ["MR", "PR", "VGPR", "CR", "SD"]
    np.testing.assert_array_equal(np.asarray(r.first_response_time)[[1, 2, 3]], [28.0, 28.0, 28.0])
    assert np.isnan(np.asarray(r.first_response_time)[[0, 4]]).all()


def test_boundaries_are_inclusive_as_imwg():
    names, _ = best(at_visits([10.0] * 6), at_visits([10.0001] * 6), at_visits([2.0] * 6))
    assert names == ["PR", "MR", "VGPR"]


def test_unconfirmed_response_does_not_count():
    # PR only at the last visit, and a single PR visit between SD visits: neither is confirmed
    names, r = best(at_visits([18, 18, 18, 18, 18, 9]), at_visits([18, 9, 18, 18, 18, 18]))
    assert names == ["SD", "SD"]
    names, _ = best(at_visits([18, 18, 18, 18, 18, 9]), confirm=False)
    assert names == ["PR"]


def test_confirmed_level_is_the_worse_of_two_visits_and_time_is_the_first():
    names, r = best(at_visits([15, 9, 1.5, 9, 9, 9]))  # PR at 56, VGPR once at 84, then PR
    assert names == ["PR"]
    assert float(r.first_response_time[0]) == 56.0


def test_progression_from_nadir():
    # nadir 4 g/L, then 9.5 g/L: rise 5.5 >= 5 and >= 25 % of nadir -> PD at that visit
    _, r = best(at_visits([8, 4, 9.5, 9.5, 9.5, 9.5]))
    cats = [RESPONSE_CATEGORIES[i] for i in np.asarray(r.visit_category[0])]
    assert cats == ["PR", "PR", "PD", "PD", "PD", "PD"]  # PD persists: the rise from the nadir stays
    # rise of 4 g/L (below the 5 g/L absolute threshold) is not PD
    _, r = best(at_visits([8, 4, 8, 8, 8, 8]))
    assert RESPONSE_CATEGORIES[int(r.visit_category[0, 2])] == "PR"
    # growth from baseline without any response: PD confirmed at every pair -> best PD
    names, _ = best(at_visits([30, 40, 50, 60, 70, 80]))
    assert names == ["PD"]


def test_rates_and_single_subject():
    _, r = best(at_visits([9] * 6), at_visits([1.0] * 6), at_visits([19] * 6), at_visits([0.01] * 6))
    assert float(r.rate("PR")) == 0.75 and float(r.rate("VGPR")) == 0.5 and float(r.rate("CR")) == 0.25
    one = imwg_response(TIMES, at_visits([9] * 6), visits=VISITS)
    assert RESPONSE_CATEGORIES[int(one.best)] == "PR"


def test_default_visits_are_monthly_and_interpolated():
    r = imwg_response(TIMES, at_visits([9] * 6))
    np.testing.assert_array_equal(np.asarray(r.visits), VISITS)


@pytest.mark.parametrize("kwargs, match", [
    (dict(times=TIMES[::-1]), "strictly increasing"),
    (dict(m_protein=np.ones((2, 5))), "same T"),
    (dict(visits=[28.0, 400.0]), "simulate over the whole"),
    (dict(visits=[56.0, 28.0]), "strictly increasing 1-D"),
    (dict(visits=[28.0]), "confirmation needs two"),
])
def test_bad_input(kwargs, match):
    args = dict(times=TIMES, m_protein=np.ones((2, TIMES.size)), visits=VISITS) | kwargs
    with pytest.raises(ValueError, match=match):
        imwg_response(args.pop("times"), args.pop("m_protein"), **args)
    with pytest.raises(ValueError, match="Unknown response category"):
        imwg_response(TIMES, np.ones(TIMES.size), visits=VISITS).at_least("sCR")
