"""Writes deploy/grafana/dashboards/triage.json (run from the project root after editing a panel here)."""
import json

DS = {"type": "prometheus", "uid": "triage-prometheus"}
panels = []


def panel(title, exprs, kind="timeseries", unit=None, w=12, h=8, legend=None, stack=False, description=""):
    pid = len(panels) + 1
    x = 0 if sum(p["gridPos"]["w"] for p in panels) % 24 == 0 else 12
    y = sum(p["gridPos"]["h"] for p in panels[::2]) if x == 0 else panels[-1]["gridPos"]["y"]
    if w == 24:
        x = 0
    p = {
        "id": pid, "type": kind, "title": title, "datasource": DS, "description": description,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": [{"datasource": DS, "refId": chr(65 + i), "expr": e, "legendFormat": l}
                    for i, (e, l) in enumerate(exprs)],
        "fieldConfig": {"defaults": {"unit": unit or "short"}, "overrides": []},
        "options": {},
    }
    if stack:
        p["fieldConfig"]["defaults"]["custom"] = {"stacking": {"mode": "normal"}}
    panels.append(p)


panel("Hook latency p50 / p95 / p99 (s), by service",
      [(f'histogram_quantile({q}, sum by (le, service) (rate(triage_hook_duration_seconds_bucket[5m])))',
        f"p{int(q*100)} {{{{service}}}}") for q in (0.5, 0.95, 0.99)], unit="s",
      description="Arrival to response. CDS Hooks asks for about 500 ms; TRIAGE_HOOK_DEADLINE_MS is 450.")
panel("Hook calls per second, by service and HTTP status",
      [('sum by (service, status) (rate(triage_hook_duration_seconds_count[5m]))', "{{service}} {{status}}")],
      unit="reqps", stack=True, description="412: the EHR had no data for the patient; 5xx: a bug (page someone).")
panel("Cards per minute, by kind and indicator",
      [('sum by (kind, indicator) (rate(triage_cards_total[5m])) * 60', "{{kind}} {{indicator}}")], stack=True)
panel("AI report outcome per hook call",
      [('sum by (status) (rate(triage_ai_reports_total[5m]))', "{{status}}")], stack=True,
      description="ready: AI card within the deadline; pending: 'being prepared'; failed: queue/worker down.")
panel("AI pending + failed share",
      [('sum(rate(triage_ai_reports_total{status=~"pending|failed"}[15m])) / '
        'clamp_min(sum(rate(triage_ai_reports_total{status!="disabled"}[15m])), 1e-9)', "pending+failed")],
      unit="percentunit")
panel("Report queue depth",
      [('max by (queue) (triage_queue_depth)', "{{queue}}")], description="Jobs waiting in the broker.")
panel("Acuity distribution (last 24 h), by source",
      [('sum by (source, acuity) (increase(triage_acuity_total[24h]))', "{{source}} ESI {{acuity}}")],
      kind="barchart", description="Compare with `triage monitor report` for drift (PSI) against a reference window.")
panel("De-identification: failures (fail closed) and identifiers removed per minute, by type",
      [('sum(rate(triage_deid_failures_total[5m])) * 60', "failures"),
       ('sum by (entity_type) (rate(triage_deid_entities_removed_total[5m])) * 60', "{{entity_type}}")])
panel("Feedback per hour, by outcome and override reason",
      [('sum by (outcome, reason) (rate(triage_feedback_total[1h])) * 3600', "{{outcome}} {{reason}}")], stack=True)
panel("Override share (1 h)",
      [('sum(rate(triage_feedback_total{outcome="overridden"}[1h])) / clamp_min(sum(rate(triage_feedback_total[1h])), 1e-9)',
        "overridden")], unit="percentunit")
panel("Celery workers online and tasks (Flower)",
      [('sum(flower_worker_online)', "workers online"),
       ('sum by (type) (rate(flower_events_total[5m]))', "{{type}}/s")])
panel("Celery task runtime p95 (s) (Flower)",
      [('histogram_quantile(0.95, sum by (le, task) (rate(flower_task_runtime_seconds_bucket[5m])))', "{{task}}")],
      unit="s")

dashboard = {
    "uid": "triage-cds", "title": "Triage CDS", "tags": ["triage", "cds-hooks"], "timezone": "utc",
    "schemaVersion": 39, "version": 1, "editable": True, "refresh": "30s",
    "time": {"from": "now-6h", "to": "now"}, "panels": panels,
}
with open("deploy/grafana/dashboards/triage.json", "w") as f:
    json.dump(dashboard, f, indent=2)
    f.write("\n")
