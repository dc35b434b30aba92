"""How nurses answer the cards over time: the monitoring report (`triage monitor report`).

Input is plain rows from the card and feedback store (de-identified already: kinds, acuity,
indicator, model version, override codes, times); output is a JSON summary, PNG plots
(matplotlib) and one HTML page. What it measures, over the window and against a reference window
(by default the same length just before it):

- acceptance and override rates of rules and AI cards, per period, AI cards by adapter version;
- override reasons, by card kind;
- acuity drift: the Population Stability Index of the acuity distribution (ESI 1-5 and "none"),
  window versus reference, per card kind (PSI < 0.1 stable, 0.1-0.25 moderate, > 0.25 large);
- AI versus rules: in hook calls that returned both, how often the acuity differs, and how often
  the AI is less urgent (the under-triage direction);
- AI pending rate: "being prepared" cards among AI cards.

`--alert name>value` thresholds turn it into a scheduled check (non-zero exit when one is crossed).
"""
from __future__ import annotations

import html
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ACUITY_BINS = ("1", "2", "3", "4", "5", "none")
PSI_EPSILON = 1e-4  # a bin empty on one side would make PSI infinite
ALERT_PATTERN = re.compile(r"^([a-z_.]+)\s*(>=|<=|>|<)\s*([0-9.]+)$")
ALERT_NAMES = ("override_rate", "override_rate.rules", "override_rate.ai", "psi.rules", "psi.ai",
               "disagreement", "ai_less_urgent", "pending_rate")


class MonitorError(ValueError):
    """Bad input to the report (a one-line message for the CLI)."""


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `2w`, `45m` -> timedelta."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*", text or "")
    if not match:
        raise MonitorError(f"bad duration {text!r}: use a number and m, h, d or w (e.g. 30d)")
    number, unit = float(match.group(1)), match.group(2)
    if number <= 0:
        raise MonitorError(f"bad duration {text!r}: must be positive")
    return timedelta(**{{"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[unit]: number})


@dataclass(frozen=True)
class Alert:
    name: str
    op: str
    threshold: float

    @classmethod
    def parse(cls, text: str) -> Alert:
        match = ALERT_PATTERN.match(text.strip())
        if not match or match.group(1) not in ALERT_NAMES:
            raise MonitorError(f"bad alert {text!r}: use NAME>VALUE with NAME one of {', '.join(ALERT_NAMES)}")
        return cls(match.group(1), match.group(2), float(match.group(3)))

    def crossed(self, value: float | None) -> bool:
        if value is None:
            return False
        return {">": value > self.threshold, ">=": value >= self.threshold,
                "<": value < self.threshold, "<=": value <= self.threshold}[self.op]


def psi(current: Mapping[str, int], reference: Mapping[str, int], bins: Sequence[str] = ACUITY_BINS) -> float | None:
    """Population Stability Index of two count distributions; None when either side is empty."""
    n_cur, n_ref = sum(current.get(b, 0) for b in bins), sum(reference.get(b, 0) for b in bins)
    if not n_cur or not n_ref:
        return None
    total = 0.0
    for b in bins:
        p = max(current.get(b, 0) / n_cur, PSI_EPSILON)
        q = max(reference.get(b, 0) / n_ref, PSI_EPSILON)
        total += (p - q) * math.log(p / q)
    return total


def adapter_of(model_version: str | None) -> str:
    """The adapter part of a card's `model_version` ("<model>; adapter <adapter>")."""
    if not model_version:
        return "unknown"
    _, sep, adapter = model_version.partition("; adapter ")
    if not sep:
        return "unknown"
    return adapter.strip() or "none"


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def _acuity_bin(value: Any) -> str:
    return str(int(value)) if value is not None else "none"


@dataclass
class MonitorInput:
    """Cards created in [reference_start, end) and feedback on them."""

    cards: list[Mapping[str, Any]]
    feedback: list[Mapping[str, Any]]  # each with card_uuid, outcome, outcome_timestamp, override_reason_*
    start: datetime
    end: datetime
    reference_start: datetime
    period: timedelta = field(default=timedelta(days=7))


def summarize(data: MonitorInput) -> dict[str, Any]:
    cards_by_uuid = {c["uuid"]: c for c in data.cards}
    in_window = [c for c in data.cards if data.start <= c["created_at"] < data.end]
    in_reference = [c for c in data.cards if data.reference_start <= c["created_at"] < data.start]

    # Feedback: the latest outcome per card counts (a nurse may accept, then override).
    latest: dict[str, Mapping[str, Any]] = {}
    for fb in sorted(data.feedback, key=lambda f: f["outcome_timestamp"]):
        if fb["card_uuid"] in cards_by_uuid:
            latest[fb["card_uuid"]] = fb
    answered = [(cards_by_uuid[u], fb) for u, fb in latest.items()
                if data.start <= cards_by_uuid[u]["created_at"] < data.end]

    def rates(pairs: Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> dict[str, Any]:
        outcomes = Counter(fb["outcome"] for _, fb in pairs)
        n = outcomes["accepted"] + outcomes["overridden"]
        return {"answered": n, "accepted": outcomes["accepted"], "overridden": outcomes["overridden"],
                "acceptance_rate": _rate(outcomes["accepted"], n), "override_rate": _rate(outcomes["overridden"], n)}

    by_kind = {kind: rates([p for p in answered if p[0]["kind"] == kind]) for kind in ("rules", "ai")}
    by_adapter = {adapter: rates(pairs) for adapter, pairs in _group(
        [p for p in answered if p[0]["kind"] == "ai"], lambda p: adapter_of(p[0].get("model_version"))).items()}

    periods = []
    t = data.start
    while t < data.end:
        until = min(t + data.period, data.end)
        row: dict[str, Any] = {"start": t.isoformat(), "end": until.isoformat()}
        for kind in ("rules", "ai"):
            row[kind] = rates([p for p in answered if p[0]["kind"] == kind and t <= p[0]["created_at"] < until])
        periods.append(row)
        t = until

    reasons: dict[str, Counter[str]] = defaultdict(Counter)
    for card, fb in answered:
        if fb["outcome"] == "overridden":
            code = fb.get("override_reason_code") or "(none given)"
            reasons[card["kind"]][code] += 1

    acuity = {}
    for kind in ("rules", "ai"):
        cur = Counter(_acuity_bin(c.get("acuity")) for c in in_window if c["kind"] == kind)
        ref = Counter(_acuity_bin(c.get("acuity")) for c in in_reference if c["kind"] == kind)
        acuity[kind] = {"window": {b: cur.get(b, 0) for b in ACUITY_BINS},
                        "reference": {b: ref.get(b, 0) for b in ACUITY_BINS}, "psi": psi(cur, ref)}

    by_call: dict[str, dict[str, Mapping[str, Any]]] = defaultdict(dict)
    for c in in_window:
        by_call[c["hook_instance"]][c["kind"]] = c
    both = [(k["rules"], k["ai"]) for k in by_call.values() if "rules" in k and "ai" in k
            and k["rules"].get("acuity") is not None and k["ai"].get("acuity") is not None]
    differ = sum(1 for r, a in both if int(r["acuity"]) != int(a["acuity"]))
    less_urgent = sum(1 for r, a in both if int(a["acuity"]) > int(r["acuity"]))
    ai_cards = sum(1 for c in in_window if c["kind"] == "ai")
    pending = sum(1 for c in in_window if c["kind"] == "pending")

    all_rates = rates(answered)
    return {
        "window": {"start": data.start.isoformat(), "end": data.end.isoformat(),
                   "reference_start": data.reference_start.isoformat(), "period_days": data.period / timedelta(days=1)},
        "cards": {"window": dict(Counter(c["kind"] for c in in_window)),
                  "reference": dict(Counter(c["kind"] for c in in_reference))},
        "feedback": {"all": all_rates, **by_kind, "ai_by_adapter": by_adapter},
        "periods": periods,
        "override_reasons": {k: dict(v.most_common()) for k, v in reasons.items()},
        "acuity": acuity,
        "ai_vs_rules": {"calls_with_both": len(both), "disagreement": _rate(differ, len(both)),
                        "ai_less_urgent": _rate(less_urgent, len(both))},
        "ai_pending": {"ai": ai_cards, "pending": pending, "pending_rate": _rate(pending, ai_cards + pending)},
    }


def metric(summary: Mapping[str, Any], name: str) -> float | None:
    """The value an alert name refers to."""
    return {
        "override_rate": summary["feedback"]["all"]["override_rate"],
        "override_rate.rules": summary["feedback"]["rules"]["override_rate"],
        "override_rate.ai": summary["feedback"]["ai"]["override_rate"],
        "psi.rules": summary["acuity"]["rules"]["psi"],
        "psi.ai": summary["acuity"]["ai"]["psi"],
        "disagreement": summary["ai_vs_rules"]["disagreement"],
        "ai_less_urgent": summary["ai_vs_rules"]["ai_less_urgent"],
        "pending_rate": summary["ai_pending"]["pending_rate"],
    }[name]


def check_alerts(summary: Mapping[str, Any], alerts: Sequence[Alert]) -> list[str]:
    """One line per crossed threshold."""
    out = []
    for alert in alerts:
        value = metric(summary, alert.name)
        if alert.crossed(value):
            out.append(f"ALERT {alert.name} = {value:.3f} ({alert.op} {alert.threshold:g})")
    return out


def _group(items: Iterable[Any], key: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = defaultdict(list)
    for item in items:
        out[key(item)].append(item)
    return dict(out)


# --- rendering ----------------------------------------------------------------------------------


def write_report(summary: Mapping[str, Any], out_dir: Path, *, alerts: Sequence[str] = ()) -> dict[str, Path]:
    """summary.json, the PNG plots and index.html in `out_dir`; the paths written."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    fig, ax = plt.subplots(figsize=(8, 3.5))
    for kind, style in (("rules", "o-"), ("ai", "s--")):
        xs = [p["start"][:10] for p in summary["periods"]]
        ys = [p[kind]["override_rate"] if p[kind]["override_rate"] is not None else math.nan
              for p in summary["periods"]]
        ax.plot(xs, ys, style, label=f"{kind} cards")
    ax.set_ylim(0, 1)
    ax.set_ylabel("override rate")
    ax.set_title("Override rate per period")
    ax.legend()
    fig.autofmt_xdate()
    written["override_rate"] = _save(fig, out_dir / "override_rate.png", plt)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for ax, kind in zip(axes, ("rules", "ai")):
        dist = summary["acuity"][kind]
        positions = range(len(ACUITY_BINS))
        for offset, which in ((-0.2, "reference"), (0.2, "window")):
            counts = [dist[which][b] for b in ACUITY_BINS]
            n = sum(counts) or 1
            ax.bar([p + offset for p in positions], [c / n for c in counts], width=0.4, label=which)
        ax.set_xticks(list(positions), [f"ESI {b}" if b != "none" else "none" for b in ACUITY_BINS])
        value = dist["psi"]
        ax.set_title(f"{kind}: PSI {value:.3f}" if value is not None else f"{kind}: PSI n/a")
    axes[0].set_ylabel("share of cards")
    axes[0].legend()
    written["acuity"] = _save(fig, out_dir / "acuity_drift.png", plt)

    fig, ax = plt.subplots(figsize=(8, 3.5))
    labels, values = [], []
    for kind, counts in summary["override_reasons"].items():
        for code, n in counts.items():
            labels.append(f"{kind}: {code}")
            values.append(n)
    if labels:
        ax.barh(labels, values)
    else:
        ax.text(0.5, 0.5, "no overrides in the window", ha="center", va="center")
    ax.set_title("Override reasons")
    written["reasons"] = _save(fig, out_dir / "override_reasons.png", plt)

    summary_path = out_dir / "summary.json"
    summary_path.write_text(json.dumps({**summary, "alerts": list(alerts)}, indent=2))
    written["summary"] = summary_path
    written["html"] = out_dir / "index.html"
    written["html"].write_text(_html(summary, alerts, written))
    return written


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def _html(summary: Mapping[str, Any], alerts: Sequence[str], files: Mapping[str, Path]) -> str:
    e = html.escape
    fb = summary["feedback"]
    rows = "".join(
        f"<tr><td>{e(kind)}</td><td>{fb[kind]['answered']}</td><td>{_pct(fb[kind]['acceptance_rate'])}</td>"
        f"<td>{_pct(fb[kind]['override_rate'])}</td></tr>" for kind in ("rules", "ai"))
    adapters = "".join(
        f"<tr><td>{e(a)}</td><td>{r['answered']}</td><td>{_pct(r['acceptance_rate'])}</td>"
        f"<td>{_pct(r['override_rate'])}</td></tr>" for a, r in fb["ai_by_adapter"].items()) or \
        "<tr><td colspan=4>no answered AI cards</td></tr>"
    vs = summary["ai_vs_rules"]
    pend = summary["ai_pending"]
    psi_rules, psi_ai = summary["acuity"]["rules"]["psi"], summary["acuity"]["ai"]["psi"]
    alert_html = "".join(f"<li>{e(a)}</li>" for a in alerts) or "<li>none</li>"
    w = summary["window"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Triage CDS monitor report</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #bbb;padding:.3em .6em}}img{{max-width:100%}}</style></head><body>
<h1>Triage CDS monitor report</h1>
<p>Window {e(w['start'])} to {e(w['end'])}; reference window from {e(w['reference_start'])}.</p>
<h2>Alerts</h2><ul>{alert_html}</ul>
<h2>Acceptance and override</h2>
<table><tr><th>cards</th><th>answered</th><th>accepted</th><th>overridden</th></tr>{rows}</table>
<h3>AI cards by adapter version</h3>
<table><tr><th>adapter</th><th>answered</th><th>accepted</th><th>overridden</th></tr>{adapters}</table>
<img src="{e(files['override_rate'].name)}" alt="Override rate per period, rules and AI cards">
<h2>Override reasons</h2><img src="{e(files['reasons'].name)}" alt="Override reasons by card kind">
<h2>Acuity drift</h2>
<p>PSI rules {'n/a' if psi_rules is None else f'{psi_rules:.3f}'}, AI {'n/a' if psi_ai is None else f'{psi_ai:.3f}'}
(below 0.1 stable; 0.1-0.25 moderate; above 0.25 large).</p>
<img src="{e(files['acuity'].name)}" alt="Acuity distribution, window against reference">
<h2>AI versus rules</h2>
<p>{vs['calls_with_both']} calls with both cards; acuity differs in {_pct(vs['disagreement'])};
AI less urgent than the rules in {_pct(vs['ai_less_urgent'])}.</p>
<h2>AI pending rate</h2><p>{_pct(pend['pending_rate'])} of AI cards were "being prepared" ({pend['pending']} of
{pend['ai'] + pend['pending']}).</p>
</body></html>
"""
