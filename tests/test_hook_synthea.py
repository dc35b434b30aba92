"""Every Synthea bundle, turned into a full-prefetch patient-view request, gives 200 and a rules card
that names one ESI level and shows NEWS2."""
from __future__ import annotations

import re

import pytest

from cds_hooks.store import get_store
from model.acuity import indicator_for
from tests.support.cds_app import load, make_app, patient_view, post_hook, synthea_paths

PATHS = synthea_paths()


def test_all_twenty_bundles_are_here():
    assert len(PATHS) == 20


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("synthea"))


@pytest.mark.parametrize("path", PATHS, ids=[p.name.split("_")[0] for p in PATHS])
def test_synthea_patient_view(app, path):
    bundle = load(path)
    body = patient_view(bundle)
    assert set(body["prefetch"]) == {"patient", "conditions", "vitals", "allergies", "medications"}
    response = post_hook(app.test_client(), body)
    assert response.status_code == 200, response.get_json()
    cards = response.get_json()["cards"]
    assert len(cards) == 1
    card = cards[0]
    assert card["summary"].startswith("ESI ") and len(card["summary"]) < 140
    assert re.findall(r"\bESI (\d)\b", card["summary"]) == [str(row_acuity(app, card))]
    # Synthea has RR, BP, pulse and temperature but no SpO2 and no consciousness: never complete.
    assert "≥" in card["summary"]
    assert "| SpO2 Scale 1 | — | — | — | missing: not recorded |" in card["detail"]
    row = get_store(app).get_card(card["uuid"])
    assert row["indicator"] == card["indicator"] == indicator_for(row["acuity"])
    assert row["rule_inputs"]["total"] == int(card["summary"].split("NEWS2 ≥")[1].split(" ")[0])


def row_acuity(app, card) -> int:
    return get_store(app).get_card(card["uuid"])["acuity"]
