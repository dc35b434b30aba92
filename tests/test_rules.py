"""NEWS2 (RCP 2017 chart), ESI v4 danger zone and infant fever, and what vital signs alone do to the
ESI level (never less urgent than 3: levels 3-5 are decided by the complaint's resources, see
test_acuity_esi.py)."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from deidentify.record import _mint
from fhir_adapter.record import Coding, ConditionEntry, VitalSign
from model.acuity import Acuity
from model.rules import Band, RulesConfig, score_record, score_vitals

AS_OF = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)
RECENT = AS_OF - timedelta(hours=1)
SNOMED = "http://snomed.info/sct"
ALERT = Coding(SNOMED, "248234008", "Mentally alert")


def vital(loinc: str, value: float | None, unit: str | None = None, *, effective=RECENT,
          **kw) -> VitalSign:
    return VitalSign(loinc=loinc, display=None, value=value, unit=unit, effective=effective, **kw)


def normal(**over) -> dict[str, VitalSign]:
    """An adult with every NEWS2 parameter present, fresh and scoring 0; keyword overrides."""
    vitals = {
        "9279-1": vital("9279-1", 16, "/min"),
        "59408-5": vital("59408-5", 98, "%", components={"3151-8": 0.0}),
        "8480-6": vital("8480-6", 120, "mm[Hg]"),
        "8867-4": vital("8867-4", 70, "/min"),
        "80288-4": vital("80288-4", None, value_code=ALERT),
        "8310-5": vital("8310-5", 37.0, "Cel"),
    }
    for code, v in over.items():
        key = code.replace("_", "-").lstrip("x")
        if v is None:
            vitals.pop(key, None)
        else:
            vitals[key] = v
    return vitals


def score(vitals, *, age_years: int | None = 40, age_days: int | None = None, **kw):
    return score_vitals(vitals, as_of=AS_OF, age_years=age_years, age_days=age_days, **kw)


def param(result, name: str):
    return next(p for p in result.parameters if p.name == name)


def test_all_normal_scores_zero_and_no_false_reassurance():
    r = score(normal())
    assert [p.name for p in r.parameters] == [
        "Respiration rate", "SpO2 Scale 1", "Air or oxygen?", "Systolic blood pressure", "Pulse",
        "Consciousness", "Temperature",
    ]
    assert all(p.points == 0 and not p.missing and not p.stale for p in r.parameters)
    assert (r.total, r.band, r.complete, r.acuity) == (0, Band.LOW, True, Acuity.URGENT)
    assert "12-hourly" in r.response
    assert any("do not indicate ESI 1-2" in x for x in r.reasons)
    assert any("depend on the resources expected" in x for x in r.reasons)


# --- every band edge of the chart, both sides ---------------------------------------------------
RR = [(8, 3), (9, 1), (11, 1), (12, 0), (20, 0), (21, 2), (24, 2), (25, 3), (0, 3), (60, 3),
      (8.5, 1), (11.5, 0), (20.5, 2), (24.5, 3)]


@pytest.mark.parametrize("value,points", RR)
def test_respiration_rate_bands(value, points):
    r = score(normal(x9279_1=vital("9279-1", value, "/min")))
    assert param(r, "Respiration rate").points == points


SPO2_SCALE1 = [(91, 3), (92, 2), (93, 2), (94, 1), (95, 1), (96, 0), (100, 0), (91.5, 2), (95.5, 0)]


@pytest.mark.parametrize("oxygen_flow", [0.0, 4.0])
@pytest.mark.parametrize("value,points", SPO2_SCALE1)
def test_spo2_scale1_bands_same_on_air_and_oxygen(value, points, oxygen_flow):
    r = score(normal(x59408_5=vital("59408-5", value, "%", components={"3151-8": oxygen_flow})))
    assert param(r, "SpO2 Scale 1").points == points
    assert param(r, "Air or oxygen?").points == (2 if oxygen_flow else 0)


SPO2_SCALE2 = [
    (83, "air", 3), (84, "air", 2), (85, "air", 2), (86, "air", 1), (87, "air", 1),
    (88, "air", 0), (92, "air", 0), (93, "air", 0), (97, "air", 0), (100, "air", 0),
    (83, "oxygen", 3), (87, "oxygen", 1), (88, "oxygen", 0), (92, "oxygen", 0),
    (93, "oxygen", 1), (94, "oxygen", 1), (95, "oxygen", 2), (96, "oxygen", 2),
    (97, "oxygen", 3), (100, "oxygen", 3), (92.5, "oxygen", 1), (94.5, "oxygen", 2),
]


@pytest.mark.parametrize("value,o2,points", SPO2_SCALE2)
def test_spo2_scale2_bands(value, o2, points):
    flow = 2.0 if o2 == "oxygen" else 0.0
    r = score(normal(x59408_5=vital("59408-5", value, "%", components={"3151-8": flow})),
              spo2_scale=2)
    assert param(r, "SpO2 Scale 2").points == points
    assert param(r, "Air or oxygen?").value == o2


def test_spo2_scale2_above_92_with_unknown_oxygen_is_a_noted_lower_bound():
    r = score(normal(x59408_5=vital("59408-5", 97, "%")), spo2_scale=2)
    spo2 = param(r, "SpO2 Scale 2")
    assert spo2.points == 0 and "lower bound" in spo2.note
    assert "Air or oxygen?" in r.missing and not r.complete


OXYGEN = [
    ({"3151-8": 0.0}, "air", 0), ({"3151-8": 0.5}, "oxygen", 2),
    ({"3150-0": 21.0}, "air", 0), ({"3150-0": 21.5}, "oxygen", 2), ({"3150-0": 40.0}, "oxygen", 2),
    ({"3151-8": 0.0, "3150-0": 28.0}, "oxygen", 2),
]


@pytest.mark.parametrize("components,expected,points", OXYGEN)
def test_air_or_oxygen_from_spo2_components(components, expected, points):
    r = score(normal(x59408_5=vital("59408-5", 97, "%", components=components)))
    o2 = param(r, "Air or oxygen?")
    assert (o2.value, o2.points, o2.missing) == (expected, points, False)


@pytest.mark.parametrize("code,value,expected", [("3151-8", 3, "oxygen"), ("3150-0", 21, "air")])
def test_air_or_oxygen_from_standalone_observations(code, value, expected):
    vitals = normal(x59408_5=vital("59408-5", 97, "%"))
    vitals[code] = vital(code, value)
    assert param(score(vitals), "Air or oxygen?").value == expected


def test_oxygen_unknown_is_missing_not_air():
    r = score(normal(x59408_5=vital("59408-5", 97, "%")))
    o2 = param(r, "Air or oxygen?")
    assert o2.missing and o2.points is None
    assert r.missing == ["Air or oxygen?"] and r.acuity == Acuity.URGENT


def test_spo2_from_arterial_code_and_newest_of_both():
    old = vital("2708-6", 85, "%", effective=AS_OF - timedelta(hours=5))
    r = score(normal(x59408_5=None, x2708_6=old))
    assert param(r, "SpO2 Scale 1").value == 85
    newer = vital("59408-5", 97, "%", effective=AS_OF - timedelta(hours=2), components={"3151-8": 0})
    r = score(normal(x59408_5=newer, x2708_6=old))
    assert param(r, "SpO2 Scale 1").value == 97


SBP = [(90, 3), (91, 2), (100, 2), (101, 1), (110, 1), (111, 0), (219, 0), (220, 3), (250, 3),
       (90.5, 2), (219.5, 3)]


@pytest.mark.parametrize("value,points", SBP)
def test_systolic_bands(value, points):
    r = score(normal(x8480_6=vital("8480-6", value, "mm[Hg]")))
    assert param(r, "Systolic blood pressure").points == points


def test_systolic_from_blood_pressure_panel_component():
    panel = vital("85354-9", None, components={"8480-6": 95.0, "8462-4": 60.0},
                  component_units={"8480-6": "mm[Hg]"})
    r = score(normal(x8480_6=None, x85354_9=panel))
    sbp = param(r, "Systolic blood pressure")
    assert (sbp.value, sbp.points, sbp.unit) == (95.0, 2, "mm[Hg]")


PULSE = [(40, 3), (41, 1), (50, 1), (51, 0), (90, 0), (91, 1), (110, 1), (111, 2), (130, 2),
         (131, 3), (40.5, 1), (130.5, 3)]


@pytest.mark.parametrize("value,points", PULSE)
def test_pulse_bands(value, points):
    assert param(score(normal(x8867_4=vital("8867-4", value, "/min"))), "Pulse").points == points


ACVPU = [
    ("248234008", "A", 0), ("130987000", "C", 3), ("300202002", "V", 3), ("255373000", "V", 3),
    ("450847001", "P", 3), ("422768004", "U", 3), ("LA9343-0", "U", 3),
]


@pytest.mark.parametrize("loinc", ["80288-4", "67775-7"])
@pytest.mark.parametrize("code,letter,points", ACVPU)
def test_consciousness_codes(code, letter, points, loinc):
    vitals = normal(x80288_4=None)
    vitals[loinc] = vital(loinc, None, value_code=Coding(SNOMED, code))
    c = param(score(vitals), "Consciousness")
    assert (c.value, c.points) == (letter, points)


def test_consciousness_unrecognised_answer_is_missing():
    v = vital("80288-4", None, value_code=Coding(SNOMED, "999999"))
    c = param(score(normal(x80288_4=v)), "Consciousness")
    assert c.missing and c.points is None


TEMP = [(35.0, 3), (35.05, 1), (35.1, 1), (36.0, 1), (36.05, 0), (36.1, 0), (38.0, 0), (38.05, 1),
        (38.1, 1), (39.0, 1), (39.05, 2), (39.1, 2), (41, 2), (33, 3)]


@pytest.mark.parametrize("value,points", TEMP)
def test_temperature_bands_celsius(value, points):
    t = param(score(normal(x8310_5=vital("8310-5", value, "Cel"))), "Temperature")
    assert t.points == points


TEMP_UNITS = [
    (95.0, "[degF]", 35.0, 3), (95.2, "degF", 35.11, 1), (100.4, "°F", 38.0, 0),
    (100.6, "[degF]", 38.11, 1), (102.2, "[degF]", 39.0, 1), (102.4, "[degF]", 39.11, 2),
    (308.15, "K", 35.0, 3), (310.15, "K", 37.0, 0), (312.35, "K", 39.2, 2), (37.5, "°C", 37.5, 0),
]


@pytest.mark.parametrize("raw,unit,celsius,points", TEMP_UNITS)
def test_temperature_unit_conversion(raw, unit, celsius, points):
    t = param(score(normal(x8310_5=vital("8310-5", raw, unit))), "Temperature")
    assert t.value == pytest.approx(celsius, abs=0.01)
    assert (t.unit, t.points) == ("Cel", points)


def test_temperature_unknown_unit_is_missing():
    t = param(score(normal(x8310_5=vital("8310-5", 37, "mg"))), "Temperature")
    assert t.missing and "unit" in t.note


@pytest.mark.parametrize("code,value", [("8867-4", -5), ("59408-5", 140), ("8480-6", 900)])
def test_implausible_values_are_missing_not_scored(code, value):
    r = score(normal(**{"x" + code.replace("-", "_"): vital(code, value)}))
    assert not r.complete and len(r.missing) >= 1
    assert all(p.points is None for p in r.parameters if p.missing)


# --- aggregates and bands ------------------------------------------------------------------------
def with_points(*, sbp=120, temp=37.0, pulse=70, spo2=98, o2=0.0, rr=16):
    return normal(
        x8480_6=vital("8480-6", sbp), x8310_5=vital("8310-5", temp, "Cel"),
        x8867_4=vital("8867-4", pulse), x9279_1=vital("9279-1", rr),
        x59408_5=vital("59408-5", spo2, "%", components={"3151-8": o2}),
    )


BANDS = [
    # (vitals, total, band, single three, acuity)
    (dict(sbp=95, temp=39.5), 4, Band.LOW, False, Acuity.URGENT),
    (dict(sbp=95, temp=39.5, pulse=91), 5, Band.MEDIUM, False, Acuity.URGENT),
    (dict(sbp=95, temp=39.5, pulse=91, spo2=95), 6, Band.MEDIUM, False, Acuity.URGENT),
    (dict(sbp=95, temp=39.5, pulse=91, o2=2.0), 7, Band.HIGH, False, Acuity.EMERGENT),
    (dict(sbp=90), 3, Band.LOW_MEDIUM, True, Acuity.URGENT),
    (dict(sbp=90, pulse=91), 4, Band.LOW_MEDIUM, True, Acuity.URGENT),
    (dict(sbp=90, temp=39.5), 5, Band.MEDIUM, True, Acuity.URGENT),
    (dict(temp=38.5), 1, Band.LOW, False, Acuity.URGENT),
]


@pytest.mark.parametrize("kw,total,band,three,acuity", BANDS)
def test_aggregate_band_edges(kw, total, band, three, acuity):
    r = score(with_points(**kw))
    assert (r.total, r.band, r.single_three, r.acuity) == (total, band, three, acuity)
    assert r.response.startswith({Band.LOW: "Low (", Band.LOW_MEDIUM: "Low-medium",
                                  Band.MEDIUM: "Medium", Band.HIGH: "High"}[band])


# --- missing and stale -------------------------------------------------------------------------
@pytest.mark.parametrize("code,name", [
    ("9279-1", "Respiration rate"), ("59408-5", "SpO2 Scale 1"), ("8480-6", "Systolic blood pressure"),
    ("8867-4", "Pulse"), ("80288-4", "Consciousness"), ("8310-5", "Temperature"),
])
def test_missing_parameter_is_reported_never_scored_zero(code, name):
    r = score(normal(**{"x" + code.replace("-", "_"): None}))
    p = param(r, name)
    assert p.missing and p.points is None and p.value is None
    assert name in r.missing and not r.complete
    assert r.total == 0 and r.acuity == Acuity.URGENT  # vitals alone never say less than 3


def test_aggregate_is_over_present_parameters():
    vitals = with_points(sbp=95, temp=39.5, pulse=91)
    del vitals["9279-1"]
    r = score(vitals)
    assert (r.total, r.complete, r.missing) == (5, False, ["Respiration rate"])
    assert r.band == Band.MEDIUM and "lower bound" in r.response


@pytest.mark.parametrize("age,window,stale", [
    (timedelta(hours=23), timedelta(hours=24), False),
    (timedelta(hours=25), timedelta(hours=24), True),
    (timedelta(hours=25), timedelta(hours=48), False),
    (timedelta(hours=2), timedelta(hours=1), True),
])
def test_stale_vitals_flagged_with_configurable_window(age, window, stale):
    old = vital("8867-4", 70, effective=AS_OF - age)
    r = score(normal(x8867_4=old), config=RulesConfig(stale_after=window))
    p = param(r, "Pulse")
    assert p.stale is stale and p.points == 0 and not p.missing
    assert (r.stale == ["Pulse"]) is stale
    assert r.acuity == Acuity.URGENT


def test_vital_with_unknown_time_is_stale_and_naive_times_are_accepted():
    r = score(normal(x8867_4=vital("8867-4", 70, effective=None)))
    assert r.stale == ["Pulse"] and r.acuity == Acuity.URGENT
    naive = vital("8867-4", 70, effective=datetime(2024, 3, 1, 11, 0))
    assert score(normal(x8867_4=naive)).stale == []


# --- ESI danger zone ---------------------------------------------------------------------------
def child(hr: float, rr: float, spo2: float = 99) -> dict[str, VitalSign]:
    return with_points(pulse=hr, rr=rr, spo2=spo2)


DANGER = [
    # (age_years, age_days, HR limit, RR limit)
    (0, 0, 180, 50), (0, 90, 180, 50),
    (0, 91, 160, 40), (0, 364, 160, 40), (1, None, 160, 40), (2, None, 160, 40),
    (3, None, 140, 30), (8, None, 140, 30),
    (9, None, 100, 20), (40, None, 100, 20), (90, None, 100, 20), (None, None, 100, 20),
]


@pytest.mark.parametrize("age_years,age_days,hr,rr", DANGER)
def test_danger_zone_age_bracket_edges(age_years, age_days, hr, rr):
    calm = score(child(hr, rr), age_years=age_years, age_days=age_days)
    assert calm.danger_zone == []
    fast = score(child(hr + 1, 12), age_years=age_years, age_days=age_days)
    assert len(fast.danger_zone) == 1 and "heart rate" in fast.danger_zone[0]
    assert fast.acuity <= Acuity.EMERGENT
    tachypnoea = score(child(60, rr + 1), age_years=age_years, age_days=age_days)
    assert len(tachypnoea.danger_zone) == 1 and "respiratory rate" in tachypnoea.danger_zone[0]
    assert tachypnoea.acuity <= Acuity.EMERGENT


@pytest.mark.parametrize("age_years,age_days", [(0, 10), (5, None), (70, None)])
@pytest.mark.parametrize("spo2,danger", [(91, True), (91.9, True), (92, False)])
def test_spo2_below_92_is_danger_zone_at_any_age(age_years, age_days, spo2, danger):
    r = score(child(60 if age_years else 120, 16, spo2), age_years=age_years, age_days=age_days)
    assert any("SpO2" in d for d in r.danger_zone) is danger


# --- infant fever ------------------------------------------------------------------------------
FEVER = [
    # (age_years, age_days, temperature, acuity from fever or None)
    (0, 0, 38.1, Acuity.EMERGENT), (0, 28, 38.1, Acuity.EMERGENT), (0, 28, 38.0, None),
    (0, 29, 38.1, Acuity.EMERGENT), (0, 90, 38.1, Acuity.EMERGENT), (0, 90, 38.0, None),
    (0, 91, 38.5, None), (0, 91, 39.1, Acuity.URGENT), (2, None, 39.1, Acuity.URGENT),
    (2, None, 39.0, None), (3, None, 39.5, None), (0, None, 38.1, Acuity.EMERGENT),
]


@pytest.mark.parametrize("age_years,age_days,temp,expected", FEVER)
def test_infant_fever(age_years, age_days, temp, expected):
    vitals = with_points(temp=temp, pulse=130, rr=28)  # normal for an infant, not danger zone
    r = score(vitals, age_years=age_years, age_days=age_days)
    assert r.danger_zone == []
    if expected is None:
        assert r.infant_fever is None
    else:
        assert r.infant_fever is not None
        assert r.acuity == expected


# --- the acuity mapping table ------------------------------------------------------------------
def acvpu(code):
    return vital("80288-4", None, value_code=Coding(SNOMED, code))


MAPPING = [
    ("unresponsive", normal(x80288_4=acvpu("422768004")), 40, Acuity.RESUSCITATION),
    ("responds to pain", normal(x80288_4=acvpu("450847001")), 40, Acuity.RESUSCITATION),
    ("responds to voice", normal(x80288_4=acvpu("300202002")), 40, Acuity.EMERGENT),
    ("new confusion", normal(x80288_4=acvpu("130987000")), 40, Acuity.EMERGENT),
    ("SBP 70", with_points(sbp=70), 40, Acuity.RESUSCITATION),
    ("SBP 71", with_points(sbp=71), 40, Acuity.EMERGENT),
    ("SBP 89", with_points(sbp=89), 40, Acuity.EMERGENT),
    ("SBP 90", with_points(sbp=90), 40, Acuity.URGENT),
    ("SBP 85, HR 125: hypoperfusion", with_points(sbp=85, pulse=125), 40, Acuity.RESUSCITATION),
    ("SpO2 84", with_points(spo2=84), 40, Acuity.RESUSCITATION),
    ("SpO2 85", with_points(spo2=85), 40, Acuity.EMERGENT),
    ("SpO2 89", with_points(spo2=89), 40, Acuity.EMERGENT),
    ("SpO2 91: danger zone at a level 3", with_points(spo2=91), 40, Acuity.EMERGENT),
    ("RR 7", with_points(rr=7), 40, Acuity.RESUSCITATION),
    ("HR 38", with_points(pulse=38), 40, Acuity.EMERGENT),
    ("T 34.5", with_points(temp=34.5), 40, Acuity.EMERGENT),
    ("NEWS2 7", with_points(sbp=95, temp=39.5, pulse=91, o2=2.0), 40, Acuity.EMERGENT),
    ("NEWS2 5", with_points(sbp=95, temp=39.5, pulse=91), 40, Acuity.URGENT),
    ("single 3", with_points(sbp=90), 40, Acuity.URGENT),
    ("NEWS2 1", with_points(temp=38.5), 40, Acuity.URGENT),
    ("NEWS2 0 complete", normal(), 40, Acuity.URGENT),
    ("NEWS2 0 age unknown", normal(), None, Acuity.URGENT),
    ("child, NEWS2 not applied", with_points(pulse=120, rr=25), 5, Acuity.URGENT),
    ("child 10 y, HR 120 danger zone", with_points(pulse=120), 10, Acuity.EMERGENT),
    ("child hypotension", with_points(sbp=80, pulse=90), 10, Acuity.EMERGENT),
]


@pytest.mark.parametrize("label,vitals,age,expected", MAPPING, ids=[m[0] for m in MAPPING])
def test_acuity_mapping(label, vitals, age, expected):
    r = score(vitals, age_years=age)
    assert r.acuity == expected
    assert r.reasons


def test_most_urgent_trigger_wins_and_all_reasons_listed():
    r = score(with_points(sbp=65, pulse=135, temp=39.5))
    assert r.acuity == Acuity.RESUSCITATION
    assert any("systolic BP 65" in x for x in r.reasons)
    assert any("danger zone" in x for x in r.reasons)
    assert any("NEWS2" in x for x in r.reasons)


@pytest.mark.parametrize("vitals", [
    {},
    {"8302-2": vital("8302-2", 170, "cm")},
    {"3151-8": vital("3151-8", 2, "L/min")},
    {"8867-4": vital("8867-4", None)},
])
def test_no_vital_signs_and_no_complaint_is_level_3_and_says_so(vitals):
    r = score(vitals)
    assert r.acuity == Acuity.URGENT and r.band is None and r.decision == "C"
    assert any("no vital signs recorded" in x for x in r.reasons)
    assert any("no chief complaint recorded" in x for x in r.reasons)
    assert len(r.missing) >= 6


def test_bad_scale_is_a_clear_error():
    with pytest.raises(ValueError, match="spo2_scale"):
        score(normal(), spo2_scale=3)


# --- records ----------------------------------------------------------------------------------
HYPERCAPNIC = "1023001"  # stand-in code configured as "scale 2" for the test


def record(conditions=(), vitals=None):
    return _mint(
        pseudonym="pt-7f3a9c", age_years=70, age_days=None, sex="male", as_of=AS_OF,
        conditions=conditions, vitals=vitals or {},
    )


def copd(status="active"):
    return ConditionEntry(codings=(Coding(SNOMED, HYPERCAPNIC),), text=None,
                          clinical_status=status, verification_status="confirmed",
                          onset=None, recorded=None)


@pytest.mark.parametrize("conditions,config,scale", [
    ((), RulesConfig(), 1),
    ((copd(),), RulesConfig(), 1),
    ((copd(),), RulesConfig(scale2_condition_codes=frozenset({HYPERCAPNIC})), 2),
    ((copd("resolved"),), RulesConfig(scale2_condition_codes=frozenset({HYPERCAPNIC})), 1),
    ((), RulesConfig(spo2_scale2=True), 2),
])
def test_score_record_selects_spo2_scale(conditions, config, scale):
    vitals = normal(x59408_5=vital("59408-5", 89, "%", components={"3151-8": 0.0}))
    r = score_record(record(conditions, vitals), config)
    assert r.spo2_scale == scale
    assert param(r, f"SpO2 Scale {scale}").points == (3 if scale == 1 else 0)


def test_to_dict_is_json_safe_and_holds_no_identifiers():
    r = score_record(record(vitals=with_points(sbp=95)))
    data = json.loads(json.dumps(r.to_dict()))
    assert data["acuity"] == 3 and data["band"] == "low" and data["total"] == 2
    assert data["parameters"][3]["effective"] == RECENT.isoformat()
    assert "pt-7f3a9c" not in json.dumps(data)


def test_newest_of_body_and_oral_temperature_is_used():
    body = vital("8310-5", 37.0, "Cel", effective=AS_OF - timedelta(days=3))
    oral = vital("8331-1", 39.5, "Cel", effective=AS_OF - timedelta(hours=1))
    t = param(score(normal(x8310_5=body, x8331_1=oral)), "Temperature")
    assert (t.loinc, t.value, t.points, t.stale) == ("8331-1", 39.5, 2, False)
