"""12-step desensitization arithmetic vs the published test vector (clinical-irr.md §C.4)."""

import pytest

from cds_server.reasoning.desensitization import compute

# Hindawi Adv Hematol 2020;4231561 Table 1, as published (bags 1 and 2 rounded to 0.03/0.3 mg/mL).
PUBLISHED = [
    # step, bag, rate, minutes, volume, dose, cumulative
    (1, 1, 2, 15, 0.5, 0.015, 0.015),
    (2, 1, 5, 15, 1.25, 0.038, 0.05),
    (3, 1, 10, 15, 2.5, 0.08, 0.13),
    (4, 1, 20, 15, 5, 0.15, 0.28),
    (5, 2, 5, 15, 1.25, 0.38, 0.65),
    (6, 2, 10, 15, 2.5, 0.75, 1.40),
    (7, 2, 20, 15, 5, 1.50, 2.90),
    (8, 2, 40, 15, 10, 3.00, 5.90),
    (9, 3, 10, 15, 2.5, 6.69, 12.59),
    (10, 3, 20, 15, 5, 13.38, 25.98),
    (11, 3, 40, 15, 10, 26.76, 52.74),
    (12, 3, 80, 174.375, 232.5, 622.26, 675.00),
]
UNROUNDED_DOSES = [
    0.0135,
    0.0338,
    0.0675,
    0.135,
    0.3375,
    0.675,
    1.35,
    2.70,
    6.6969,
    13.3938,
    26.7875,
    622.8096,
]


@pytest.fixture
def protocol(kb):
    return kb.protocols["rdd-12-step"]


def test_published_table_is_reproduced_exactly(protocol):
    sched = compute(protocol, 675, 250, 80, bag_concentrations=(0.03, 0.3))
    assert len(sched.steps) == len(PUBLISHED)
    for step, row in zip(sched.steps, PUBLISHED, strict=True):
        number, bag, rate, minutes, volume, dose, cumulative = row
        assert (step.number, step.bag, step.rate_ml_h) == (number, bag, rate)
        assert step.minutes == pytest.approx(minutes)
        assert step.volume_ml == pytest.approx(volume)
        # The paper rounds its doses (0.0375 printed as 0.038, 0.075 as 0.08): ±0.01 mg.
        assert step.dose_mg == pytest.approx(dose, abs=0.01)
        assert step.cumulative_mg == pytest.approx(cumulative, abs=0.01)
    assert sched.total_minutes == pytest.approx(339.375)
    assert sched.steps[-1].cumulative_mg == pytest.approx(675)


def test_unrounded_concentrations(protocol):
    sched = compute(protocol, 675, 250, 80)
    assert [s.dose_mg for s in sched.steps] == pytest.approx(UNROUNDED_DOSES, abs=0.0001)
    assert sched.bag_concentrations == pytest.approx((0.027, 0.27, 2.678751), abs=1e-6)
    assert sched.total_minutes == pytest.approx(339.375)
    assert sum(s.dose_mg for s in sched.steps) == pytest.approx(675)


@pytest.mark.parametrize(
    ("rate", "total"),
    [(50, 444.0), (75, 351.0), (80, 339.4), (100, 304.5), (125, 276.6), (150, 258.0)],
)
def test_total_time_table_convention_a(protocol, rate, total):
    # clinical-irr.md §C.3 table for V = 250 mL (adjusted-concentration convention).
    assert compute(protocol, 675, 250, rate).total_minutes == pytest.approx(total, abs=0.05)


@pytest.mark.parametrize("dose", [1, 100, 675, 2000])
def test_any_dose_sums_to_target(protocol, dose):
    sched = compute(protocol, dose, 250, 80)
    assert sched.steps[-1].cumulative_mg == pytest.approx(dose)


@pytest.mark.parametrize(
    ("dose", "volume", "rate"), [(0, 250, 80), (675, 0, 80), (675, 250, 0), (675, 15, 80)]
)
def test_impossible_inputs_raise(protocol, dose, volume, rate):
    with pytest.raises(ValueError):
        compute(protocol, dose, volume, rate)
