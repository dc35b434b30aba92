"""Vital-sign rules: NEWS2 (RCP 2017), ESI v4 danger-zone vitals and infant fever, mapped to Acuity.

These rules are the product's safety net: they run on every hook, instantly, with no model.

NEWS2 (Royal College of Physicians, *National Early Warning Score (NEWS) 2*, 2017, chart 1)
-----------------------------------------------------------------------------------------
Seven parameters, each 0-3 points, in chart order: respiration rate, SpO2 (scale 1, or scale 2
only for patients with hypercapnic respiratory failure where configured), air or oxygen,
systolic blood pressure, pulse, consciousness (ACVPU), temperature. Aggregate bands:
0-4 low; a single parameter scoring 3 low-medium; 5-6 medium; 7+ high.

The chart prints integer (or one-decimal) ranges. A measured value that falls between two
printed ranges (20.5 /min, 35.05 degC) is scored with continuous thresholds: each printed upper
bound is inclusive and anything above it belongs to the next band (35.05 > 35.0 -> 1 point).

A parameter that is absent, unreadable or implausible is MISSING: it scores no points (`points`
is None, never 0), `complete` is False, and the aggregate is the sum over the present parameters
(a lower bound of the true score). Vitals older than `RulesConfig.stale_after` before the
record's `as_of` (or with no time) are still scored but marked stale.

NEWS2 is not validated under 16 years (RCP): for children it is shown but does not drive acuity;
the ESI paediatric rules do.

Acuity mapping (the only place rules become an Acuity; see `_assign_acuity`)
--------------------------------------------------------------------------
=====  =========================================================================================
Level  Triggered by (the most urgent trigger wins; every trigger is listed in `reasons`)
=====  =========================================================================================
1      ACVPU P or U (ESI v4 decision point A: "unresponsive" is P or U on AVPU);
       SpO2 < 80 %; systolic BP <= 70 mmHg (<= 60 mmHg in neonates 0-28 days)
2      NEWS2 >= 7 (age >= 16 or unknown); ESI danger-zone HR/RR for age or SpO2 < 92 %;
       ACVPU C (new confusion) or V (ESI decision point B: new confusion/lethargy is high risk);
       infant fever > 38.0 degC at 0-28 days (ESI 2) and at 29-90 days ("consider ESI 2":
       taken as 2, over-triage is the safe error); systolic BP below the PALS hypotension limit
       for age in children (< 60 at 0-28 d, < 70 to 1 y, < 70 + 2 x age to 10 y, < 90 to 15 y)
3      NEWS2 5-6 or any single parameter scoring 3 (age >= 16 or unknown);
       fever > 39.0 degC at 3-36 months (ESI "consider ESI 3")
4      NEWS2 1-4; or NEWS2 0 with missing or stale parameters; or age unknown; or a child
       (NEWS2 not validated) without a trigger above
5      NEWS2 0 with all seven parameters present and fresh, age known and >= 16
None   no scorable vital sign at all ("cannot assess: no vital signs")
=====  =========================================================================================

Incomplete or stale data can never yield 5 (capped at 4). Vitals alone cannot tell ESI 4 from 5
(that is a resource decision); 5 only says the rules found nothing.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import TYPE_CHECKING, Any

from fhir_adapter.record import Coding, VitalSign
from model.acuity import Acuity

if TYPE_CHECKING:
    from deidentify.record import DeidentifiedRecord

# --- LOINC codes read here -------------------------------------------------------------------
RESPIRATION_RATE = "9279-1"
SPO2_ARTERIAL = "2708-6"
SPO2_PULSE_OXIMETRY = "59408-5"
O2_FLOW_RATE = "3151-8"  # inhaled oxygen flow rate, L/min
O2_CONCENTRATION = "3150-0"  # inhaled oxygen concentration, %
SYSTOLIC_BP = "8480-6"
BP_PANEL = "85354-9"
PULSE = "8867-4"
LEVEL_OF_CONSCIOUSNESS = "80288-4"
LEVEL_OF_RESPONSIVENESS = "67775-7"
BODY_TEMPERATURE = "8310-5"
ORAL_TEMPERATURE = "8331-1"  # accepted when 8310-5 is absent

# ACVPU answers. SNOMED CT: HL7 UK CareConnect-ACVPU-1 value set (248234008 mentally alert,
# 130987000 acute confusion, 300202002 responds to voice, 450847001 responds to pain,
# 422768004 unresponsive); IHE mPSC Level.Of.Responsiveness.AVPU.VS adds 255373000 verbal.
# LOINC answer LA9343-0 = unresponsive (LOINC answer list LL3830-8, mapped to 422768004).
_ACVPU_CODES: dict[str, str] = {
    "248234008": "A",
    "130987000": "C",
    "300202002": "V",
    "255373000": "V",
    "450847001": "P",
    "422768004": "U",
    "LA9343-0": "U",
}
# Display/text fallbacks, checked in this order (most severe first).
_ACVPU_WORDS: tuple[tuple[str, str], ...] = (
    ("unresponsive", "U"),
    ("pain", "P"),
    ("voice", "V"),
    ("verbal", "V"),
    ("confus", "C"),
    ("alert", "A"),
)
_ACVPU_NAMES = {
    "A": "alert",
    "C": "new confusion",
    "V": "responds to voice",
    "P": "responds to pain",
    "U": "unresponsive",
}

# Physiologically possible ranges; outside them a value is treated as an entry error (missing).
_PLAUSIBLE = {
    "rr": (0.0, 100.0),
    "spo2": (0.0, 100.0),
    "sbp": (0.0, 350.0),
    "pulse": (0.0, 350.0),
    "temp": (20.0, 46.0),
}


class Band(str, Enum):
    LOW = "low"
    LOW_MEDIUM = "low-medium"
    MEDIUM = "medium"
    HIGH = "high"


# RCP NEWS2 chart 2/Table: clinical response to the NEWS trigger thresholds.
RESPONSE_ZERO = "Minimum 12-hourly monitoring; continue routine NEWS monitoring."
RESPONSES: dict[Band, str] = {
    Band.LOW: (
        "Low (NEWS2 1-4): minimum 4-6-hourly monitoring; a registered nurse assesses the patient "
        "and decides whether monitoring should be more frequent or care escalated."
    ),
    Band.LOW_MEDIUM: (
        "Low-medium (a single parameter scoring 3): minimum 1-hourly monitoring; the registered "
        "nurse informs the medical team, who review and decide whether to escalate care "
        "(urgent ward-based response)."
    ),
    Band.MEDIUM: (
        "Medium (NEWS2 5-6), key threshold for urgent response: minimum 1-hourly monitoring; "
        "the registered nurse immediately informs the medical team; urgent assessment by a "
        "clinician competent in acute illness; care in an environment with monitoring facilities; "
        "consider sepsis."
    ),
    Band.HIGH: (
        "High (NEWS2 7 or more), urgent or emergency response: continuous monitoring of vital "
        "signs; the registered nurse immediately informs the medical team (at least specialist "
        "registrar level); emergency assessment by a team with critical-care competencies, "
        "including advanced airway skills; consider transfer to a higher-dependency unit or ICU."
    ),
}
RESPONSE_NONE = "Cannot assess: no vital signs recorded. Obtain a full set of observations."


@dataclass
class RulesConfig:
    stale_after: timedelta = timedelta(hours=24)
    spo2_scale2: bool = False  # use SpO2 scale 2 for every patient (a unit for hypercapnic care)
    # Condition codes (e.g. SNOMED for hypercapnic respiratory failure) that select scale 2.
    scale2_condition_codes: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ParameterScore:
    name: str
    loinc: str | None
    value: float | str | None  # numeric (temperature in Cel) or "A".."U" / "air" / "oxygen"
    unit: str | None
    effective: datetime | None
    points: int | None  # None when missing: never silently 0
    missing: bool
    stale: bool
    note: str | None = None


@dataclass(frozen=True)
class RulesResult:
    parameters: list[ParameterScore]
    total: int
    band: Band | None  # None when nothing could be scored
    single_three: bool
    complete: bool
    missing: list[str]
    stale: list[str]
    danger_zone: list[str]
    infant_fever: str | None
    acuity: Acuity | None
    reasons: list[str]
    response: str
    spo2_scale: int = 1
    news2_applicable: bool = True  # False under 16 years (not validated by the RCP)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe view (logged with every card). Holds only vitals, times and scores."""
        data = asdict(self)
        data["band"] = self.band.value if self.band else None
        data["acuity"] = int(self.acuity) if self.acuity is not None else None
        for p in data["parameters"]:
            p["effective"] = p["effective"].isoformat() if p["effective"] else None
        return data


# --- NEWS2 chart: (inclusive upper bound, points), checked in order ----------------------------
_RR_BANDS = ((8, 3), (11, 1), (20, 0), (24, 2), (math.inf, 3))
_SPO2_SCALE1 = ((91, 3), (93, 2), (95, 1), (math.inf, 0))
_SPO2_SCALE2_LOW = ((83, 3), (85, 2), (87, 1), (92, 0))  # >= 93: depends on air/oxygen
_SPO2_SCALE2_O2 = ((94, 1), (96, 2), (math.inf, 3))  # >= 93 on oxygen
_SBP_BANDS = ((90, 3), (100, 2), (110, 1), (219, 0), (math.inf, 3))
_PULSE_BANDS = ((40, 3), (50, 1), (90, 0), (110, 1), (130, 2), (math.inf, 3))
_TEMP_BANDS = ((35.0, 3), (36.0, 1), (38.0, 0), (39.0, 1), (math.inf, 2))


def _band_points(value: float, bands: tuple[tuple[float, int], ...]) -> int:
    # Continuous thresholds: a value between two printed ranges belongs to the upper one.
    for upper, points in bands:
        if value <= upper:
            return points
    raise AssertionError("bands end at infinity")


def news2_band(total: int, single_three: bool) -> Band:
    if total >= 7:
        return Band.HIGH
    if total >= 5:
        return Band.MEDIUM
    if single_three:
        return Band.LOW_MEDIUM
    return Band.LOW


# --- helpers ---------------------------------------------------------------------------------
def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _is_stale(effective: datetime | None, as_of: datetime, window: timedelta) -> bool:
    if effective is None:
        return True  # a vital of unknown time cannot be trusted as current
    return _aware(as_of) - _aware(effective) > window


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def to_celsius(value: float, unit: str | None) -> float | None:
    """Temperature in degrees Celsius; None for an unknown unit."""
    u = (unit or "").strip()
    if u in ("Cel", "cel", "C", "°C", "degC", "deg C", "℃"):
        return value
    if u in ("[degF]", "degF", "°F", "F", "deg F", "℉"):
        return (value - 32.0) * 5.0 / 9.0
    if u == "K":
        return value - 273.15
    if not u and 25.0 <= value <= 45.0:
        return value  # no unit, but only Celsius is plausible in this range
    return None


def _fmt(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


class _Scorer:
    def __init__(self, vitals: Mapping[str, VitalSign], as_of: datetime, config: RulesConfig):
        self.vitals = vitals
        self.as_of = as_of
        self.config = config

    def stale(self, vital: VitalSign | None) -> bool:
        return _is_stale(vital.effective if vital else None, self.as_of, self.config.stale_after)

    def missing(self, name: str, loinc: str | None, note: str | None = None,
                vital: VitalSign | None = None) -> ParameterScore:
        return ParameterScore(
            name=name, loinc=loinc, value=None, unit=vital.unit if vital else None,
            effective=vital.effective if vital else None, points=None, missing=True,
            stale=False, note=note,
        )

    def numeric(self, name: str, key: str, loinc: str, vital: VitalSign | None,
                bands: tuple[tuple[float, int], ...], unit: str) -> ParameterScore:
        if vital is None:
            return self.missing(name, loinc, "not recorded")
        value = _number(vital.value)
        if value is None:
            return self.missing(name, loinc, "recorded without a numeric value", vital)
        low, high = _PLAUSIBLE[key]
        if not low <= value <= high:
            return self.missing(name, loinc, f"implausible value {_fmt(value)} ignored", vital)
        return ParameterScore(
            name=name, loinc=loinc, value=value, unit=vital.unit or unit,
            effective=vital.effective, points=_band_points(value, bands), missing=False,
            stale=self.stale(vital),
        )


def _newest(*vitals: VitalSign | None, valued: bool = False) -> VitalSign | None:
    present = [v for v in vitals if v is not None]
    if valued and any(_number(v.value) is not None for v in present):
        present = [v for v in present if _number(v.value) is not None]
    if not present:
        return None
    # Newest first; unknown times last; ties keep argument order (pulse oximetry first).
    return max(
        enumerate(present),
        key=lambda iv: (iv[1].effective is not None,
                        _aware(iv[1].effective) if iv[1].effective else datetime.min.replace(tzinfo=timezone.utc),
                        -iv[0]),
    )[1]


def _systolic(vitals: Mapping[str, VitalSign]) -> VitalSign | None:
    vital = vitals.get(SYSTOLIC_BP)
    if vital is not None and _number(vital.value) is not None:
        return vital
    panel = vitals.get(BP_PANEL)
    if panel is not None and SYSTOLIC_BP in panel.components:
        return VitalSign(
            loinc=SYSTOLIC_BP, display="Systolic blood pressure",
            value=panel.components[SYSTOLIC_BP],
            unit=panel.component_units.get(SYSTOLIC_BP, "mm[Hg]"), effective=panel.effective,
        )
    return vital


def _oxygen(vitals: Mapping[str, VitalSign], spo2: VitalSign | None,
            scorer: _Scorer) -> ParameterScore:
    """Air or supplemental oxygen, from the SpO2 observation's components or stand-alone vitals."""
    name = "Air or oxygen?"
    sources: list[tuple[str, float, VitalSign]] = []
    if spo2 is not None:
        for code in (O2_FLOW_RATE, O2_CONCENTRATION):
            value = _number(spo2.components.get(code))
            if value is not None:
                sources.append((code, value, spo2))
    if not sources:
        for code in (O2_FLOW_RATE, O2_CONCENTRATION):
            vital = vitals.get(code)
            value = _number(vital.value) if vital else None
            if vital is not None and value is not None:
                sources.append((code, value, vital))
    if not sources:
        return scorer.missing(name, None, "no inhaled oxygen flow rate or concentration recorded")
    on_oxygen = any(
        (code == O2_FLOW_RATE and value > 0) or (code == O2_CONCENTRATION and value > 21)
        for code, value, _ in sources
    )
    code, value, vital = sources[0]
    detail = f"{_fmt(value)} L/min" if code == O2_FLOW_RATE else f"FiO2 {_fmt(value)} %"
    return ParameterScore(
        name=name, loinc=code, value="oxygen" if on_oxygen else "air", unit=None,
        effective=vital.effective, points=2 if on_oxygen else 0, missing=False,
        stale=scorer.stale(vital), note=f"inhaled oxygen {detail}",
    )


def _spo2(spo2: VitalSign | None, oxygen: ParameterScore, scale: int,
          scorer: _Scorer) -> ParameterScore:
    name = f"SpO2 Scale {scale}"
    if spo2 is None:
        return scorer.missing(name, None, "not recorded")
    value = _number(spo2.value)
    if value is not None and (spo2.unit or "").strip() == "1" and value <= 1.0:
        value *= 100.0  # saturation recorded as a fraction
    if value is None:
        return scorer.missing(name, spo2.loinc, "recorded without a numeric value", spo2)
    if not 0 <= value <= 100:
        return scorer.missing(name, spo2.loinc, f"implausible value {_fmt(value)} ignored", spo2)
    note = None
    if scale == 1:
        points = _band_points(value, _SPO2_SCALE1)
    elif value <= 92:
        points = _band_points(value, _SPO2_SCALE2_LOW)
    elif oxygen.value == "oxygen":
        points = _band_points(value, _SPO2_SCALE2_O2)
    else:
        points = 0
        if oxygen.missing:
            note = "scale 2 >= 93 % scores 0 on air, 1-3 on oxygen; oxygen unknown: lower bound"
    return ParameterScore(
        name=name, loinc=spo2.loinc, value=value, unit=spo2.unit or "%",
        effective=spo2.effective, points=points, missing=False, stale=scorer.stale(spo2),
        note=note,
    )


def _acvpu_letter(vital: VitalSign) -> str | None:
    coding: Coding | None = vital.value_code
    if coding is not None and coding.code:
        if coding.code in _ACVPU_CODES:
            return _ACVPU_CODES[coding.code]
        if coding.code.upper() in _ACVPU_NAMES:
            return coding.code.upper()  # local A/C/V/P/U code systems
    words = " ".join(
        t for t in ((coding.display if coding else None), vital.text) if t
    ).lower()
    for word, letter in _ACVPU_WORDS:
        if word in words:
            return letter
    return None


def _consciousness(vitals: Mapping[str, VitalSign], scorer: _Scorer) -> ParameterScore:
    name = "Consciousness"
    vital = _newest(vitals.get(LEVEL_OF_CONSCIOUSNESS), vitals.get(LEVEL_OF_RESPONSIVENESS))
    if vital is None:
        return scorer.missing(name, None, "not coded")
    letter = _acvpu_letter(vital)
    if letter is None:
        return scorer.missing(name, vital.loinc, "answer not recognised as ACVPU", vital)
    return ParameterScore(
        name=name, loinc=vital.loinc, value=letter, unit=None, effective=vital.effective,
        points=0 if letter == "A" else 3, missing=False, stale=scorer.stale(vital),
        note=_ACVPU_NAMES[letter],
    )


def _temperature(vitals: Mapping[str, VitalSign], scorer: _Scorer) -> ParameterScore:
    name = "Temperature"
    vital = _newest(vitals.get(BODY_TEMPERATURE), vitals.get(ORAL_TEMPERATURE), valued=True)
    if vital is None:
        return scorer.missing(name, BODY_TEMPERATURE, "not recorded")
    raw = _number(vital.value)
    if raw is None:
        return scorer.missing(name, vital.loinc, "recorded without a numeric value", vital)
    celsius = to_celsius(raw, vital.unit)
    if celsius is None:
        return scorer.missing(name, vital.loinc, f"unrecognised unit {vital.unit!r}", vital)
    low, high = _PLAUSIBLE["temp"]
    if not low <= celsius <= high:
        return scorer.missing(name, vital.loinc, f"implausible value {_fmt(raw)} ignored", vital)
    converted = celsius != raw
    celsius = round(celsius, 2)
    note = f"converted from {_fmt(raw)} {vital.unit}" if converted else None
    return ParameterScore(
        name=name, loinc=vital.loinc, value=celsius, unit="Cel", effective=vital.effective,
        points=_band_points(celsius, _TEMP_BANDS), missing=False, stale=scorer.stale(vital),
        note=note,
    )


# --- ESI v4 ----------------------------------------------------------------------------------
def _age_group(age_years: int | None, age_days: int | None) -> tuple[str, float, float] | None:
    """ESI v4 danger-zone bracket: (label, HR limit, RR limit); exceeding a limit is danger."""
    if age_days is not None and age_days <= 90:
        return ("age under 3 months", 180, 50)
    if age_days is not None or (age_years is not None and age_years < 3):
        return ("age 3 months to 3 years", 160, 40)
    if age_years is not None and age_years <= 8:
        return ("age 3-8 years", 140, 30)
    if age_years is not None:
        return ("age over 8 years", 100, 20)
    return None


def _danger_zone(params: dict[str, ParameterScore], age_years: int | None,
                 age_days: int | None) -> list[str]:
    group = _age_group(age_years, age_days)
    label, hr_limit, rr_limit = group or ("age unknown, adult limits", 100, 20)
    found = []
    pulse, rr, spo2 = params["pulse"], params["rr"], params["spo2"]
    if not pulse.missing and pulse.value > hr_limit:
        found.append(f"heart rate {_fmt(pulse.value)}/min > {hr_limit} ({label})")
    if not rr.missing and rr.value > rr_limit:
        found.append(f"respiratory rate {_fmt(rr.value)}/min > {rr_limit} ({label})")
    if not spo2.missing and spo2.value < 92:
        found.append(f"SpO2 {_fmt(spo2.value)} % < 92 %")
    return found


def _infant_fever(temp: ParameterScore, age_years: int | None,
                  age_days: int | None) -> tuple[str, Acuity] | None:
    if temp.missing:
        return None
    t = temp.value
    if age_days is not None and age_days <= 28 and t > 38.0:
        return (f"fever {_fmt(t)} °C > 38.0 °C at age 0-28 days: ESI 2", Acuity.EMERGENT)
    if age_days is not None and age_days <= 90 and t > 38.0:
        return (f"fever {_fmt(t)} °C > 38.0 °C at age 29-90 days: consider ESI 2", Acuity.EMERGENT)
    if age_days is None and age_years == 0 and t > 38.0:
        # under one year but exact age unknown: cannot exclude a neonate
        return (f"fever {_fmt(t)} °C > 38.0 °C under one year (days unknown): ESI 2", Acuity.EMERGENT)
    infant = age_days is not None or (age_years is not None and age_years < 3)
    if infant and t > 39.0:
        return (f"fever {_fmt(t)} °C > 39.0 °C at age 3-36 months: consider ESI 3", Acuity.URGENT)
    return None


def _pals_hypotension(sbp: float, age_years: int | None, age_days: int | None) -> float | None:
    """PALS systolic hypotension limit for a child, or None for adults/unknown age."""
    if age_days is not None and age_days <= 28:
        return 60
    if age_days is not None or age_years == 0:
        return 70
    if age_years is not None and age_years <= 10:
        return 70 + 2 * age_years
    if age_years is not None and age_years < 16:
        return 90
    return None


# --- public API ------------------------------------------------------------------------------
def score_vitals(
    vitals: Mapping[str, VitalSign],
    *,
    as_of: datetime,
    age_years: int | None,
    age_days: int | None,
    config: RulesConfig | None = None,
    spo2_scale: int = 1,
) -> RulesResult:
    """Score the newest vitals (LOINC -> VitalSign) with NEWS2 and ESI, and map to Acuity."""
    if spo2_scale not in (1, 2):
        raise ValueError("spo2_scale must be 1 or 2")
    config = config or RulesConfig()
    scorer = _Scorer(vitals, as_of, config)
    spo2_vital = _newest(vitals.get(SPO2_PULSE_OXIMETRY), vitals.get(SPO2_ARTERIAL), valued=True)
    oxygen = _oxygen(vitals, spo2_vital, scorer)
    params = {
        "rr": scorer.numeric("Respiration rate", "rr", RESPIRATION_RATE,
                             vitals.get(RESPIRATION_RATE), _RR_BANDS, "/min"),
        "spo2": _spo2(spo2_vital, oxygen, spo2_scale, scorer),
        "o2": oxygen,
        "sbp": scorer.numeric("Systolic blood pressure", "sbp", SYSTOLIC_BP,
                              _systolic(vitals), _SBP_BANDS, "mm[Hg]"),
        "pulse": scorer.numeric("Pulse", "pulse", PULSE, vitals.get(PULSE), _PULSE_BANDS, "/min"),
        "acvpu": _consciousness(vitals, scorer),
        "temp": _temperature(vitals, scorer),
    }
    parameters = list(params.values())
    present = [p for p in parameters if not p.missing]
    total = sum(p.points for p in present)
    single_three = any(p.points == 3 for p in present)
    missing = [p.name for p in parameters if p.missing]
    stale = [p.name for p in present if p.stale]
    complete = not missing
    news2_applicable = age_years is None or age_years >= 16
    physiological = [p for k, p in params.items() if k != "o2" and not p.missing]

    if not physiological:
        return RulesResult(
            parameters=parameters, total=total, band=None, single_three=False, complete=False,
            missing=missing, stale=stale, danger_zone=[], infant_fever=None, acuity=None,
            reasons=["cannot assess: no vital signs"], response=RESPONSE_NONE,
            spo2_scale=spo2_scale, news2_applicable=news2_applicable,
        )

    band = news2_band(total, single_three)
    danger = _danger_zone(params, age_years, age_days)
    fever = _infant_fever(params["temp"], age_years, age_days)
    acuity, reasons = _assign_acuity(
        params, total=total, band=band, complete=complete, stale=stale, danger=danger,
        fever=fever, age_years=age_years, age_days=age_days, news2_applicable=news2_applicable,
    )
    response = RESPONSE_ZERO if total == 0 else RESPONSES[band]
    if not complete:
        response += f" Missing: {', '.join(missing)} - the score is a lower bound."
    return RulesResult(
        parameters=parameters, total=total, band=band, single_three=single_three,
        complete=complete, missing=missing, stale=stale, danger_zone=danger,
        infant_fever=fever[0] if fever else None, acuity=acuity, reasons=reasons,
        response=response, spo2_scale=spo2_scale, news2_applicable=news2_applicable,
    )


def _assign_acuity(
    params: dict[str, ParameterScore], *, total: int, band: Band, complete: bool,
    stale: list[str], danger: list[str], fever: tuple[str, Acuity] | None,
    age_years: int | None, age_days: int | None, news2_applicable: bool,
) -> tuple[Acuity, list[str]]:
    """The single rules -> Acuity mapping (table in the module docstring)."""
    triggers: list[tuple[Acuity, str]] = []
    acvpu, spo2, sbp = params["acvpu"], params["spo2"], params["sbp"]

    # Level 1: needs an immediate life-saving intervention.
    if not acvpu.missing and acvpu.value in ("P", "U"):
        triggers.append((Acuity.RESUSCITATION, f"consciousness: {acvpu.note} (ESI level 1)"))
    if not spo2.missing and spo2.value < 80:
        triggers.append((Acuity.RESUSCITATION, f"SpO2 {_fmt(spo2.value)} % < 80 %"))
    resus_sbp = 60 if age_days is not None and age_days <= 28 else 70
    if not sbp.missing and sbp.value <= resus_sbp:
        triggers.append((Acuity.RESUSCITATION, f"systolic BP {_fmt(sbp.value)} mmHg <= {resus_sbp}"))

    # Level 2: high risk, should not wait.
    if news2_applicable and total >= 7:
        triggers.append((Acuity.EMERGENT, f"NEWS2 {total}: high"))
    triggers += [(Acuity.EMERGENT, f"ESI danger zone: {d}") for d in danger]
    if not acvpu.missing and acvpu.value in ("C", "V"):
        triggers.append((Acuity.EMERGENT, f"consciousness: {acvpu.note} (ESI high risk)"))
    if fever:
        triggers.append((fever[1], f"infant fever: {fever[0]}"))
    if not sbp.missing:
        limit = _pals_hypotension(sbp.value, age_years, age_days)
        if limit is not None and sbp.value < limit:
            triggers.append((Acuity.EMERGENT,
                             f"systolic BP {_fmt(sbp.value)} mmHg < {_fmt(limit)} (hypotension for age)"))

    # Level 3-4: NEWS2 bands (adults only).
    if news2_applicable:
        threes = [p.name for p in params.values() if p.points == 3]
        if 5 <= total <= 6:
            triggers.append((Acuity.URGENT, f"NEWS2 {total}: medium"))
        elif total < 5 and threes:
            triggers.append((Acuity.URGENT, f"NEWS2 single parameter scoring 3: {', '.join(threes)}"))
        elif 1 <= total <= 4:
            triggers.append((Acuity.LESS_URGENT, f"NEWS2 {total}: low"))

    if triggers:
        triggers.sort(key=lambda t: t[0])
        level = triggers[0][0]
        reasons = [reason for _, reason in triggers]
        if level < Acuity.NON_URGENT:
            return level, reasons
    reasons = []
    # Nothing above 4 triggered: 5 only with a complete, fresh, adult NEWS2 of 0.
    caps = []
    if not complete:
        caps.append("incomplete vital signs: " + ", ".join(p.name for p in params.values() if p.missing))
    if stale:
        caps.append("stale vital signs: " + ", ".join(stale))
    if age_years is None:
        caps.append("age unknown")
    elif not news2_applicable:
        caps.append("NEWS2 not validated under 16 and no ESI danger-zone vitals")
    if caps:
        return Acuity.LESS_URGENT, [f"NEWS2 {total} on the recorded parameters"] + [
            f"capped at 4: {c}" for c in caps
        ]
    return Acuity.NON_URGENT, [f"NEWS2 {total} with all parameters present and fresh"]


def uses_scale2(record: DeidentifiedRecord, config: RulesConfig) -> bool:
    if config.spo2_scale2:
        return True
    if not config.scale2_condition_codes:
        return False
    for condition in record.conditions:
        if condition.clinical_status not in (None, "active", "recurrence", "relapse"):
            continue
        if condition.verification_status in ("refuted", "entered-in-error"):
            continue
        if any(c.code in config.scale2_condition_codes for c in condition.codings):
            return True
    return False


def score_record(record: DeidentifiedRecord, config: RulesConfig | None = None) -> RulesResult:
    """Score a de-identified record; SpO2 scale 2 where configured for this patient."""
    config = config or RulesConfig()
    return score_vitals(
        record.vitals, as_of=record.as_of, age_years=record.age_years, age_days=record.age_days,
        config=config, spo2_scale=2 if uses_scale2(record, config) else 1,
    )
