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

Acuity: ESI v4 decision points (the only place rules become an Acuity; see `_assign_acuity`)
--------------------------------------------------------------------------------------------
NEWS2 is an in-hospital deterioration score, not a triage scale: it is shown on the card and a
high score (7+) is a high-risk finding, but a low NEWS2 never lowers the level. The level follows
the ESI v4 algorithm, using the chief complaint (`model/complaints.py`, tables in
`esi_tables.yaml`) as well as the vitals:

=====  =========================================================================================
Point  Triggered by (the most urgent trigger wins; every trigger is listed in `reasons`)
=====  =========================================================================================
A -> 1 complaint needing an immediate life-saving intervention (arrest, apnoea, unresponsive,
       active seizure, anaphylaxis, ...); ACVPU P or U; SpO2 < 85 % (< 90 % with a breathing
       complaint or an altered mind); systolic BP <= 70 mmHg (<= 60 in neonates); respiratory rate < 8 (age >= 1);
       adult systolic BP < 90 with heart rate < 40 or >= 120, or with new confusion
B -> 2 high-risk complaint (adult chest pain, stroke signs, SI/HI, overdose, GI bleeding, ...);
       ACVPU C or V (new confusion); severe pain (>= 7/10) unless the complaint is a minor one
       expecting at most one resource; NEWS2 >= 7 (age >= 16 or unknown); SpO2 < 90 %;
       systolic BP < 90 (adults) or below the PALS limit for age; heart rate < 40;
       temperature < 35 degC; fever > 38.0 degC at 0-90 days
C      expected resources from the complaint: 2+ -> 3, 1 -> 4, 0 -> 5; no complaint, or one the
       table does not know -> 3 (never less urgent than the data support); fever > 39.0 degC at
       3-36 months -> at least 3
D      a level 3 with danger-zone vitals (HR/RR over the limit for age, SpO2 < 92 %) -> 2
=====  =========================================================================================
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
from model.complaints import ComplaintFindings, assess_complaint

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
PAIN_SEVERITY = "72514-3"  # 0-10 numeric rating
SEVERE_PAIN = 7  # ESI v4 decision point B: pain >= 7/10 is severe

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
    decision: str | None = None  # the ESI decision point that set the level: A, B, C or D
    headline: str = ""  # the deciding finding, short, for the card summary
    complaint: ComplaintFindings | None = None  # what the chief complaint matched (no free text)
    resources: int | None = None  # expected resources (decision point C); None: unknown
    pain: float | None = None  # 0-10

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe view (logged with every card). Holds vitals, times, scores and the table
        entries the complaint matched (never the complaint text)."""
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
    complaint: ComplaintFindings | None = None,
) -> RulesResult:
    """Score the newest vitals (LOINC -> VitalSign) with NEWS2, and set the ESI level from the
    vitals and the chief complaint's findings (`model.complaints.assess_complaint`)."""
    if spo2_scale not in (1, 2):
        raise ValueError("spo2_scale must be 1 or 2")
    config = config or RulesConfig()
    complaint = complaint or ComplaintFindings(present=False)
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
    pain = _pain(vitals.get(PAIN_SEVERITY), complaint)

    band = news2_band(total, single_three) if physiological else None
    danger = _danger_zone(params, age_years, age_days)
    fever = _infant_fever(params["temp"], age_years, age_days)
    acuity, decision, reasons = _assign_acuity(
        params, total=total, danger=danger, fever=fever, age_years=age_years, age_days=age_days,
        news2_applicable=news2_applicable, complaint=complaint, pain=pain,
        has_vitals=bool(physiological),
    )
    if not physiological:
        response = RESPONSE_NONE
    else:
        response = RESPONSE_ZERO if total == 0 else RESPONSES[band]
        if not complete:
            response += f" Missing: {', '.join(missing)} - the score is a lower bound."
    return RulesResult(
        parameters=parameters, total=total, band=band, single_three=single_three if physiological else False,
        complete=complete, missing=missing, stale=stale, danger_zone=danger,
        infant_fever=fever[0] if fever else None, acuity=acuity, reasons=[r for _, r in reasons],
        response=response, spo2_scale=spo2_scale, news2_applicable=news2_applicable,
        decision=decision, headline=reasons[0][0] if reasons else "", complaint=complaint,
        resources=complaint.resources, pain=pain,
    )


def _pain(vital: VitalSign | None, complaint: ComplaintFindings) -> float | None:
    value = _number(vital.value) if vital is not None else None
    if value is not None and 0 <= value <= 10:
        return value
    return complaint.pain


def _assign_acuity(
    params: dict[str, ParameterScore], *, total: int, danger: list[str],
    fever: tuple[str, Acuity] | None, age_years: int | None, age_days: int | None,
    news2_applicable: bool, complaint: ComplaintFindings, pain: float | None, has_vitals: bool,
) -> tuple[Acuity, str, list[tuple[str, str]]]:
    """ESI v4 decision points A-D (table in the module docstring).

    Returns the level, the decision point that set it, and every finding as (headline, reason),
    the deciding one first. Never a level less urgent than 3 unless the complaint is known to need
    at most one resource.
    """
    found: list[tuple[Acuity, str, str, str]] = []  # (level, point, headline, reason)

    def add(level: Acuity, point: str, headline: str, reason: str) -> None:
        found.append((level, point, headline, reason))

    acvpu, spo2, sbp = params["acvpu"], params["spo2"], params["sbp"]
    pulse, rr, temp = params["pulse"], params["rr"], params["temp"]
    adult = age_years is None or age_years >= 16
    breathing = any(complaint.has(i) for i in ("severe-breathing", "breathing", "wheeze-asthma",
                                                "asthma-refractory", "airway-stridor"))

    # A: needs an immediate life-saving intervention.
    for m in complaint.life_saving:
        add(Acuity.RESUSCITATION, "A", f"life-saving: {m.matched}",
            f"complaint \"{m.matched}\": may need an immediate life-saving intervention ({m.source})")
    if not acvpu.missing and acvpu.value in ("P", "U"):
        add(Acuity.RESUSCITATION, "A", acvpu.note, f"consciousness: {acvpu.note} (ESI decision point A)")
    altered = not acvpu.missing and acvpu.value != "A"
    if not spo2.missing and (spo2.value < 85 or (spo2.value < 90 and (breathing or altered))):
        why = " < 85 %" if spo2.value < 85 else (" with a breathing complaint" if breathing else " with an altered mind")
        add(Acuity.RESUSCITATION, "A", f"SpO2 {_fmt(spo2.value)} %", f"SpO2 {_fmt(spo2.value)} %{why}")
    resus_sbp = 60 if age_days is not None and age_days <= 28 else 70
    if not sbp.missing and sbp.value <= resus_sbp:
        add(Acuity.RESUSCITATION, "A", f"SBP {_fmt(sbp.value)}", f"systolic BP {_fmt(sbp.value)} mmHg <= {resus_sbp}")
    if not rr.missing and rr.value < 8 and (age_years is None or age_years >= 1):
        add(Acuity.RESUSCITATION, "A", f"RR {_fmt(rr.value)}", f"respiratory rate {_fmt(rr.value)}/min < 8")
    if adult and not sbp.missing and resus_sbp < sbp.value < 90:
        # Hypotension with signs of hypoperfusion (ESI v4 ch. 3): a rate far off, or a changed mind.
        signs = []
        if not pulse.missing and (pulse.value < 40 or pulse.value >= 120):
            signs.append(f"heart rate {_fmt(pulse.value)}/min")
        if not acvpu.missing and acvpu.value in ("C", "V"):
            signs.append(acvpu.note)
        if signs:
            add(Acuity.RESUSCITATION, "A", f"SBP {_fmt(sbp.value)} with {signs[0]}",
                f"systolic BP {_fmt(sbp.value)} mmHg with {' and '.join(signs)}: hypoperfusion")

    # B: high-risk situation, new confusion, severe pain or distress.
    for m in complaint.high_risk:
        add(Acuity.EMERGENT, "B", f"high risk: {m.matched}",
            f"high-risk complaint \"{m.matched}\" ({m.source})")
    if not acvpu.missing and acvpu.value in ("C", "V"):
        add(Acuity.EMERGENT, "B", acvpu.note, f"consciousness: {acvpu.note} (ESI decision point B)")
    minor = complaint.resources is not None and complaint.resources <= 1 and not complaint.high_risk
    if pain is not None and pain >= SEVERE_PAIN:
        if minor:
            add(Acuity.LESS_URGENT if complaint.resources == 1 else Acuity.NON_URGENT, "B", "",
                f"pain {_fmt(pain)}/10 with a minor presentation: consider ESI 2 (not applied; "
                f"the handbook leaves severe pain with a minor injury at its resource level)")
        else:
            add(Acuity.EMERGENT, "B", f"severe pain {_fmt(pain)}/10", f"severe pain {_fmt(pain)}/10 (>= {SEVERE_PAIN})")
    if news2_applicable and total >= 7:
        add(Acuity.EMERGENT, "B", f"NEWS2 {total}", f"NEWS2 {total}: high (emergency response threshold)")
    if not spo2.missing and 85 <= spo2.value < 90 and not (breathing or altered):
        add(Acuity.EMERGENT, "B", f"SpO2 {_fmt(spo2.value)} %", f"SpO2 {_fmt(spo2.value)} % < 90 %")
    if not sbp.missing and sbp.value > resus_sbp:
        limit = _pals_hypotension(sbp.value, age_years, age_days)
        if limit is None and adult and sbp.value < 90:
            add(Acuity.EMERGENT, "B", f"SBP {_fmt(sbp.value)}", f"systolic BP {_fmt(sbp.value)} mmHg < 90 (hypotension)")
        elif limit is not None and sbp.value < limit:
            add(Acuity.EMERGENT, "B", f"SBP {_fmt(sbp.value)}",
                f"systolic BP {_fmt(sbp.value)} mmHg < {_fmt(limit)} (hypotension for age)")
    if not pulse.missing and pulse.value < 40 and not (adult and not sbp.missing and sbp.value < 90):
        add(Acuity.EMERGENT, "B", f"HR {_fmt(pulse.value)}", f"heart rate {_fmt(pulse.value)}/min < 40")
    if not temp.missing and temp.value < 35.0:
        add(Acuity.EMERGENT, "B", f"T {_fmt(temp.value)} °C", f"temperature {_fmt(temp.value)} °C < 35 (hypothermia)")
    if fever and fever[1] == Acuity.EMERGENT:
        add(Acuity.EMERGENT, "B", "infant fever", f"infant fever: {fever[0]}")

    # C: expected resources.
    resources = complaint.resources
    if resources is None:
        level = Acuity.URGENT
        why = ("no chief complaint recorded" if not complaint.present
               else "chief complaint not in the resource table")
        add(level, "C", "resources unknown",
            f"{why}: ESI 3-5 depend on the resources expected; taken as 3 until a nurse decides")
    else:
        level = Acuity.URGENT if resources >= 2 else (Acuity.LESS_URGENT if resources == 1 else Acuity.NON_URGENT)
        names = ", ".join(dict.fromkeys(m.matched for m in complaint.resource_matches))
        kinds = ", ".join(k.replace("_", " ") for k in complaint.resource_kinds) or "none"
        add(level, "C", f"{names}: {_resource_words(resources)}",
            f"\"{names}\" expects {_resource_words(resources)} ({kinds}; ESI v4 handbook ch. 5)")
    if fever and fever[1] == Acuity.URGENT:
        if complaint.immunized and complaint.resource_matches:
            found.append((Acuity.NON_URGENT, "C", "", f"{fever[0]}: not applied, immunized with a source named"))
        else:
            add(Acuity.URGENT, "C", "fever > 39 °C", f"infant fever: {fever[0]}")

    # D: danger-zone vitals move a level 3 to 2.
    provisional = min(f[0] for f in found)
    if provisional == Acuity.URGENT:
        for d in danger:
            add(Acuity.EMERGENT, "D", f"danger zone: {d.split(' (')[0]}", f"ESI danger zone: {d} (decision point D)")
    elif provisional < Acuity.URGENT:
        found += [(Acuity.NON_URGENT, "D", "", f"ESI danger zone: {d}") for d in danger]
    else:
        for d in danger:
            found.append((Acuity.NON_URGENT, "D", "",
                          f"danger-zone vitals noted ({d}); ESI applies them only at decision point D (level 3)"))
    if not has_vitals:
        found.append((Acuity.NON_URGENT, "-", "", "no vital signs recorded: obtain a full set (decision point D not checked)"))

    found.sort(key=lambda f: (f[0], not f[2]))  # notes without a headline never decide
    acuity, point = found[0][0], found[0][1]
    if acuity >= Acuity.URGENT and has_vitals:
        found.insert(1, (acuity, "", "", "the vital signs do not indicate ESI 1-2"))
    return acuity, point, [(h, r) for _, _, h, r in found if r]


def _resource_words(n: int) -> str:
    return "two or more resources" if n >= 2 else ("one resource" if n == 1 else "no resources")


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
    """ESI level and NEWS2 of a de-identified record; SpO2 scale 2 where configured."""
    config = config or RulesConfig()
    return score_vitals(
        record.vitals, as_of=record.as_of, age_years=record.age_years, age_days=record.age_days,
        config=config, spo2_scale=2 if uses_scale2(record, config) else 1,
        complaint=complaint_findings(record),
    )


def complaint_findings(record: Any) -> ComplaintFindings:
    """The chief complaint of a record (de-identified, or identified inside the API process)."""
    complaints = getattr(record, "complaints", ())
    return assess_complaint(
        [c.text for c in complaints], [code for c in complaints for code in c.codings],
        age_years=record.age_years, age_days=record.age_days,
    )
