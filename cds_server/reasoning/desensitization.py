"""Rapid-desensitization schedule arithmetic (e.g. the 12-step, 3-bag protocol).

Pure functions: the protocol (bag dilutions, step rates, step time, bag-3 convention) comes
from ``cards/protocols``; the order gives the target dose D (mg), the final volume V (mL)
and the final rate R (mL/h). Bag k holds V mL at D/V divided by its dilution; the fixed
steps run for ``step_minutes`` each; the last step runs the last bag at R until it is empty.
With the adjusted-concentration convention the last bag's concentration is chosen so that
the whole schedule delivers exactly D.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cds_server.knowledge.model import DesensitizationProtocol
from cds_server.model import MINUTES_PER_HOUR


@dataclass(frozen=True)
class Step:
    """One step of a computed desensitization schedule."""

    number: int
    bag: int
    rate_ml_h: float
    minutes: float
    volume_ml: float
    dose_mg: float
    cumulative_mg: float


@dataclass(frozen=True)
class Schedule:
    """A computed schedule: bag concentrations (mg/mL), steps, and total time."""

    dose_mg: float
    volume_ml: float
    final_rate_ml_h: float
    bag_concentrations: tuple[float, ...]
    steps: tuple[Step, ...]

    @property
    def total_minutes(self) -> float:
        return sum(s.minutes for s in self.steps)


def compute(
    protocol: DesensitizationProtocol,
    dose_mg: float,
    volume_ml: float,
    final_rate_ml_h: float,
    bag_concentrations: Sequence[float] | None = None,
) -> Schedule:
    """Compute the schedule; ``bag_concentrations`` may fix the dilute bags (rounded as published).

    Raises ValueError if the inputs cannot give a schedule (non-positive values, or a bag
    volume smaller than what the fixed steps draw from it).
    """
    if dose_mg <= 0 or volume_ml <= 0 or final_rate_ml_h <= 0:
        raise ValueError("dose, volume and final rate must be positive")
    n_bags = len(protocol.bag_dilutions)
    final_conc = dose_mg / volume_ml
    concs = [final_conc / d for d in protocol.bag_dilutions]
    if bag_concentrations is not None:
        for i, c in enumerate(bag_concentrations[: n_bags - 1]):
            concs[i] = c
    step_hours = protocol.step_minutes / MINUTES_PER_HOUR
    fixed_vol = [r * step_hours for r in protocol.step_rates_ml_h]
    used_by_bag = [0.0] * n_bags
    for bag, vol in zip(protocol.step_bags, fixed_vol, strict=True):
        used_by_bag[bag - 1] += vol
    if any(used > volume_ml for used in used_by_bag):
        raise ValueError("the fixed steps draw more than one bag holds")
    delivered_before_last = sum(used_by_bag[i] * concs[i] for i in range(n_bags - 1))
    last = n_bags - 1
    if protocol.convention == "adjusted-concentration":
        concs[last] = (dose_mg - delivered_before_last) / volume_ml
        last_bag_volume = volume_ml
    else:
        last_bag_volume = (dose_mg - delivered_before_last) / concs[last]
    final_volume = last_bag_volume - used_by_bag[last]
    if final_volume <= 0:
        raise ValueError("the final step has no volume left")
    steps: list[Step] = []
    cumulative = 0.0
    for i, (bag, rate, vol) in enumerate(
        zip(protocol.step_bags, protocol.step_rates_ml_h, fixed_vol, strict=True), start=1
    ):
        dose = vol * concs[bag - 1]
        cumulative += dose
        steps.append(Step(i, bag, rate, protocol.step_minutes, vol, dose, cumulative))
    final_dose = final_volume * concs[last]
    cumulative += final_dose
    steps.append(
        Step(
            len(steps) + 1,
            n_bags,
            final_rate_ml_h,
            final_volume / final_rate_ml_h * MINUTES_PER_HOUR,
            final_volume,
            final_dose,
            cumulative,
        )
    )
    return Schedule(dose_mg, volume_ml, final_rate_ml_h, tuple(concs), tuple(steps))
