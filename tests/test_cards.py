"""Rules card content and CDS Hooks conformance."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from cds_hooks.cards import OVERRIDE_REASONS, SUMMARY_MAX, rules_card
from cds_hooks.schemas import Card, to_wire
from fhir_adapter.record import Coding, VitalSign
from model.rules import RulesConfig, score_vitals

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def vital(loinc: str, value: float | None, unit: str | None, hours_ago: float = 2, **kw) -> VitalSign:
    return VitalSign(loinc=loinc, display=None, value=value, unit=unit,
                     effective=NOW - timedelta(hours=hours_ago), **kw)


def full_set(rr=15, spo2=97, o2=0, sbp=120, pulse=70, acvpu="248234008", temp=37.0, hours_ago=2):
    vitals = {
        "9279-1": vital("9279-1", rr, "/min", hours_ago),
        "59408-5": vital("59408-5", spo2, "%", hours_ago, components={"3151-8": o2}),
        "8480-6": vital("8480-6", sbp, "mm[Hg]", hours_ago),
        "8867-4": vital("8867-4", pulse, "/min", hours_ago),
        "80288-4": vital("80288-4", None, None, hours_ago, value_code=Coding("http://snomed.info/sct", acvpu)),
        "8310-5": vital("8310-5", temp, "Cel", hours_ago),
    }
    return vitals


def card_for(vitals, *, age=40, age_days=None, skipped=0, stale_hours=24) -> tuple[Card, object]:
    config = RulesConfig(stale_after=timedelta(hours=stale_hours))
    result = score_vitals(vitals, as_of=NOW, age_years=age, age_days=age_days, config=config)
    return rules_card(result, as_of=NOW, skipped=skipped, stale_after=config.stale_after), result


def assert_conformant(card: Card) -> None:
    wire = to_wire(card)
    assert 0 < len(wire["summary"]) < 140
    assert wire["indicator"] in {"info", "warning", "critical"}
    assert wire["uuid"] and wire["source"]["label"]
    assert wire["source"]["topic"]["system"] and wire["source"]["topic"]["code"]
    assert wire["overrideReasons"] and all(r["display"] and r["code"] and r["system"] for r in wire["overrideReasons"])
    assert "selectionBehavior" not in wire  # no suggestions on the rules card


def test_high_news2_card():
    # RR 25 (3) + SpO2 91 (3) + oxygen (2) + SBP 95 (2) + pulse 115 (2) + A (0) + 38.5 (1) = 13
    card, result = card_for(full_set(rr=25, spo2=91, o2=4, sbp=95, pulse=115, temp=38.5))
    assert result.total == 13
    assert card.summary.startswith("ESI 1 (resuscitation): ") or card.summary.startswith("ESI 2 (emergent): ")
    assert "NEWS2 13 (high)" in card.summary
    assert card.indicator == "critical"
    assert_conformant(card)
    for name in ("Respiration rate", "SpO2 Scale 1", "Air or oxygen?", "Systolic blood pressure",
                 "Pulse", "Consciousness", "Temperature"):
        assert f"| {name} |" in card.detail
    assert "| Respiration rate | 25 /min | 2 h ago | 3 |" in card.detail
    assert "| Temperature | 38.5 °C | 2 h ago | 1 |" in card.detail
    assert "| **Aggregate** | | | **13** |" in card.detail
    assert "emergency assessment by a team with critical-care competencies" in card.detail
    assert "danger zone" in card.detail.lower()  # pulse 115 > 100 and RR 25 > 20 in adults


def test_all_normal_without_complaint_is_level_3_not_false_reassurance():
    card, result = card_for(full_set())
    assert (result.total, int(result.acuity)) == (0, 3)
    assert card.indicator == "warning"
    assert card.summary == "ESI 3 (urgent): urgent clinical review; resources unknown; NEWS2 0 (low)"
    assert "the vital signs do not indicate ESI 1-2" in card.detail
    assert "ESI 3-5 depend on the resources expected" in card.detail
    assert "Missing" not in card.detail
    assert_conformant(card)


def test_missing_parameters_are_listed_not_scored_zero():
    vitals = full_set(rr=22)
    del vitals["80288-4"], vitals["59408-5"]
    card, result = card_for(vitals)
    assert not result.complete
    assert card.summary.endswith("NEWS2 ≥2 (low, 3 missing)")
    assert "| Consciousness | — | — | — | missing: not coded |" in card.detail
    assert "**Missing (not scored, never counted as 0):** " in card.detail
    assert "SpO2 Scale 1" in card.detail.split("**Missing")[1]
    assert_conformant(card)


def test_stale_vitals_flagged_with_relative_time():
    card, result = card_for(full_set(hours_ago=30), stale_hours=24)
    assert result.stale
    assert "| Pulse | 70 /min | 30 h ago | 0 | stale |" in card.detail
    assert "**Stale (older than 24 h):**" in card.detail
    assert int(result.acuity) == 3  # vitals alone never say less than 3


def test_danger_zone_reason_in_summary():
    # NEWS2 low but an adult SpO2 < 92 is an ESI danger-zone finding (acuity 2).
    card, result = card_for(full_set(spo2=91))
    assert int(result.acuity) == 2 and result.total == 3
    assert card.indicator == "critical"
    assert "SpO2 91 % < 92 %" in card.summary
    assert len(card.summary) <= SUMMARY_MAX


def test_infant_fever_finding():
    vitals = {"8310-5": vital("8310-5", 38.4, "Cel"), "8867-4": vital("8867-4", 150, "/min")}
    card, result = card_for(vitals, age=0, age_days=20)
    assert result.infant_fever
    assert "**Infant fever:**" in card.detail and "0-28 days" in card.detail
    assert card.indicator == "critical"
    assert "not validated under 16" in card.summary


def test_fahrenheit_converted_and_shown_in_celsius():
    vitals = full_set()
    vitals["8310-5"] = vital("8310-5", 101.3, "[degF]")
    card, _ = card_for(vitals)
    assert "38.5 °C (converted from 101.3 [degF])" in card.detail


def test_no_vitals_no_complaint_card_is_level_3_and_asks_for_observations():
    card, result = card_for({})
    assert int(result.acuity) == 3
    assert card.indicator == "warning"
    assert "ESI 3" in card.summary and "no vital signs recorded" in card.summary
    assert "NEWS2 could not be scored" in card.detail and "Obtain a full set of observations" in card.detail
    assert_conformant(card)


@pytest.mark.parametrize("skipped, text", [(1, "1 resource could not be read"), (3, "3 resources could not be read")])
def test_skipped_resources_counted_in_detail(skipped, text):
    card, _ = card_for(full_set(), skipped=skipped)
    assert text in card.detail
    card, _ = card_for({}, skipped=skipped)
    assert text in card.detail


def test_future_time_is_marked():
    card, _ = card_for(full_set(hours_ago=-3))
    assert "in 3 h (future time)" in card.detail


def test_override_reasons_cover_the_brief():
    displays = {r.display for r in OVERRIDE_REASONS}
    assert {"Vitals re-measured", "Clinical judgement differs", "Data is out of date"} <= displays
    assert len({r.code for r in OVERRIDE_REASONS}) == len(OVERRIDE_REASONS)


def test_every_card_has_its_own_uuid():
    a, _ = card_for(full_set())
    b, _ = card_for(full_set())
    assert a.uuid != b.uuid and a.summary == b.summary
