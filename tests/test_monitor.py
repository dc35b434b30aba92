"""`triage monitor report`: rates, reasons, PSI drift, AI-vs-rules, pending rate, from a real store."""
from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from cds_hooks.cli import cli
from cds_hooks.store import CardLog, FeedbackItem, Store
from model.monitor import Alert, MonitorError, adapter_of, parse_duration, psi

END = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def card(kind, acuity, days_ago, hook, adapter=None, indicator="info"):
    return CardLog(uuid=str(uuid.uuid4()), service_id="triage", hook_instance=hook, kind=kind, indicator=indicator,
                   summary="s", rule_inputs={}, acuity=acuity, created_at=END - timedelta(days=days_ago, hours=1),
                   model_version=f"gpt-oss@abc; adapter {adapter}" if adapter else None)


@pytest.fixture()
def store_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'monitor.sqlite'}"
    store = Store(url)
    store.migrate()
    rows, fb = [], []
    # Reference window (31-60 days ago): rules ESI 3 and 4, half each.
    for i in range(40):
        rows.append(card("rules", 3 if i % 2 else 4, 31 + i % 29, f"ref-{i}"))
    # Window (0-29 days ago): rules ESI 2 and 3, half each; 30 accepted, 10 overridden.
    window_rules = [card("rules", 2 if i % 2 else 3, i % 29, f"win-{i}") for i in range(40)]
    rows += window_rules
    for i, c in enumerate(window_rules):
        if i < 30:
            fb.append(FeedbackItem(c.uuid, "accepted", c.created_at + timedelta(minutes=5)))
        else:
            code = "clinical-judgement" if i < 36 else "vitals-remeasured"
            fb.append(FeedbackItem(c.uuid, "overridden", c.created_at + timedelta(minutes=5),
                                   override_reason_system="x", override_reason_code=code))
    # 20 of those calls also got an AI card: same acuity in 15; less urgent (one level) in 5.
    for i in range(20):
        rules = window_rules[i]
        ai_acuity = rules.acuity + 1 if i < 5 else rules.acuity
        ai = card("ai", ai_acuity, 0, rules.hook_instance, adapter="lora@A" if i < 10 else "lora@B")
        ai = CardLog(**{**ai.__dict__, "created_at": rules.created_at})
        rows.append(ai)
        outcome = "overridden" if i >= 10 else "accepted"  # adapter B's cards all overridden
        fb.append(FeedbackItem(ai.uuid, outcome, ai.created_at + timedelta(minutes=3),
                               override_reason_system="x" if outcome == "overridden" else None,
                               override_reason_code="ai-wrong-acuity" if outcome == "overridden" else None))
    # 5 calls got "being prepared" instead.
    rows += [card("pending", None, 3, f"win-{20 + i}") for i in range(5)]
    store.log_cards(rows)
    store.save_feedback("triage", fb)
    # A later change of mind counts: one accepted AI card (adapter A) is then overridden.
    first_ai = next(r for r in rows if r.kind == "ai")
    store.save_feedback("triage", [FeedbackItem(first_ai.uuid, "overridden", first_ai.created_at + timedelta(hours=1),
                                                override_reason_system="x", override_reason_code="ai-unsafe")])
    store.dispose()
    return url


def run(args, url):
    return CliRunner().invoke(cli, ["monitor", "report", "--until", END.isoformat(), "--database-url", url, *args],
                              prog_name="triage")


def test_report_figures_from_the_store(store_url, tmp_path):
    out = tmp_path / "report"
    result = run(["--since", "30d", "--out", str(out)], store_url)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    rules, ai = summary["feedback"]["rules"], summary["feedback"]["ai"]
    assert (rules["answered"], rules["accepted"], rules["overridden"]) == (40, 30, 10)
    assert rules["override_rate"] == pytest.approx(0.25)
    assert (ai["answered"], ai["overridden"]) == (20, 11)  # 10 of adapter B + the change of mind
    assert summary["feedback"]["ai_by_adapter"]["lora@A"]["overridden"] == 1
    assert summary["feedback"]["ai_by_adapter"]["lora@B"]["override_rate"] == 1.0
    assert summary["override_reasons"]["rules"] == {"clinical-judgement": 6, "vitals-remeasured": 4}
    assert summary["override_reasons"]["ai"] == {"ai-wrong-acuity": 10, "ai-unsafe": 1}
    # Drift: ESI {2, 3} against {3, 4}: PSI computed independently here.
    eps = 1e-4
    expected = 2 * (0.5 - eps) * math.log(0.5 / eps)
    assert summary["acuity"]["rules"]["psi"] == pytest.approx(expected)
    assert summary["acuity"]["rules"]["window"]["2"] == 20 and summary["acuity"]["rules"]["reference"]["4"] == 20
    assert summary["ai_vs_rules"] == {"calls_with_both": 20, "disagreement": 0.25, "ai_less_urgent": 0.25}
    assert summary["ai_pending"] == {"ai": 20, "pending": 5, "pending_rate": 0.2}
    assert summary["cards"]["window"] == {"rules": 40, "ai": 20, "pending": 5}
    assert sum(p["rules"]["answered"] for p in summary["periods"]) == 40
    for name in ("index.html", "override_rate.png", "acuity_drift.png", "override_reasons.png"):
        assert (out / name).stat().st_size > 1000, name
    assert (out / "override_rate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "index.html").read_text()
    assert "acuity_drift.png" in page and "25.0%" in page and "lora@B" in page
    assert "override rules 25.0%, AI 55.0%" in result.output


def test_alerts_exit_non_zero_and_say_which(store_url, tmp_path):
    ok = run(["--out", str(tmp_path / "a"), "--alert", "override_rate.rules>0.3", "--alert", "pending_rate>0.5"],
             store_url)
    assert ok.exit_code == 0, ok.output
    crossed = run(["--out", str(tmp_path / "b"), "--alert", "psi.rules>0.25", "--alert", "ai_less_urgent>=0.25",
                   "--alert", "override_rate.rules>0.3"], store_url)
    assert crossed.exit_code == 1
    assert "ALERT psi.rules" in crossed.output and "ALERT ai_less_urgent = 0.250" in crossed.output
    assert "override_rate.rules" not in crossed.output.split("ALERT", 1)[1]
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["alerts"][0].startswith("ALERT psi.rules")


@pytest.mark.parametrize("args, text", [
    (["--since", "thirty"], "bad duration"),
    (["--since", "0d"], "must be positive"),
    (["--alert", "overrides>1"], "bad alert"),
    (["--until", "yesterday"], "--until"),
])
def test_bad_input_is_one_line(store_url, tmp_path, args, text):
    result = run(["--out", str(tmp_path / "x"), *args], store_url)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], result.output


def test_an_empty_or_missing_database_is_a_clear_answer(tmp_path):
    empty = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    Store(empty).migrate()
    result = run(["--out", str(tmp_path / "r")], empty)
    assert result.exit_code == 0 and "0 cards, 0 answered" in result.output
    missing = run(["--out", str(tmp_path / "r2")], f"sqlite:///{tmp_path / 'none.sqlite'}")
    assert missing.exit_code == 1 and missing.output.startswith("Error: cannot read the database")


def test_helpers():
    assert parse_duration("30d") == timedelta(days=30) and parse_duration("2w") == timedelta(weeks=2)
    with pytest.raises(MonitorError):
        parse_duration("30")
    assert psi({"1": 10}, {}) is None and psi({"1": 5, "2": 5}, {"1": 5, "2": 5}) == 0.0
    assert adapter_of("m; adapter lora@x") == "lora@x" and adapter_of(None) == "unknown" and adapter_of("m") == "unknown"
    assert Alert.parse("psi.ai>0.2").crossed(0.3) and not Alert.parse("psi.ai>0.2").crossed(None)
