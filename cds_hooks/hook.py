"""The patient-view pipeline: validated request -> prefetch -> record -> de-identify -> rules -> cards.

PHI exists only between `build_record` and `Deidentifier.record`; from the rules on, everything
(the card, the database row, the logs) sees the `DeidentifiedRecord` alone.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from cds_hooks import ai_cards
from cds_hooks.cards import rules_card
from cds_hooks.errors import PreconditionFailed
from cds_hooks.schemas import HookRequest, HookResponse, PatientViewContext
from cds_hooks.store import CardLog, Store, get_store
from deidentify import Deidentifier
from deidentify.pseudonym import demo_key, load_key
from fhir_adapter.client import PrefetchUnavailable, resolve_prefetch
from fhir_adapter.extract import RecordError, build_record
from model.rules import RulesConfig, RulesResult, complaint_findings, score_record, score_vitals

if TYPE_CHECKING:
    from flask import Flask

    from deidentify.record import DeidentifiedRecord
    from model.reports import ReportService

    from cds_hooks.services import Service

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """What every hook call shares, built once per app (per gunicorn worker)."""

    deidentifier: Deidentifier
    rules_config: RulesConfig
    store: Store
    fhir_timeout_s: float
    deadline_ms: int
    reports: ReportService | None = None  # AI reports (None: rules-only)
    reserve_ms: int = 40  # of the deadline, kept for building and logging cards after the AI wait
    deid_failures: int = 0  # records refused by de-identification (fail closed), this process

    @classmethod
    def from_app(cls, app: Flask) -> Runtime:
        cfg = app.config
        key_file = cfg.get("TRIAGE_PSEUDONYM_KEY_FILE")
        if key_file:
            key = load_key(key_file)
        else:
            log.warning(
                "TRIAGE_PSEUDONYM_KEY_FILE is not set: using the demo pseudonym key kept in the "
                "instance folder (demo only; set a managed key in production)"
            )
            key = demo_key(app.instance_path)
        from model.reports import ReportService

        reports = ReportService.from_settings(cfg)
        scrubber = None
        if cfg.get("TRIAGE_SCRUB_FREE_TEXT", True):
            from deidentify.engine import build_analyzer
            from deidentify.text import TextScrubber

            scrubber = TextScrubber(build_analyzer(cfg.get("TRIAGE_SPACY_MODEL") or "en_core_web_sm"))
            scrubber.scrub("Warm-up: seen by Dr. Smith on 3/4/2020.")  # first call builds lazy state
            # Feedback comments are clinician free text: stored only after this scrubber ran.
            app.extensions["triage_scrub_text"] = lambda text: scrubber.scrub(text).text
        return cls(
            reports=reports,
            reserve_ms=reports.settings.hook_reserve_ms,
            deidentifier=Deidentifier(key, scrubber=scrubber),
            rules_config=RulesConfig(stale_after=timedelta(hours=float(cfg["TRIAGE_STALE_VITALS_HOURS"]))),
            store=get_store(app),
            fhir_timeout_s=float(cfg["TRIAGE_FHIR_TIMEOUT_S"]),
            deadline_ms=int(cfg["TRIAGE_HOOK_DEADLINE_MS"]),
        )


# A made-up chart (no real person) run once per worker process before its first call: the
# first parse of each FHIR resource type, the first scrub and the first rules card build lazy
# state that otherwise cost the first nurse's call ~300 ms of its deadline.
_WARM_UP = {
    "patient": {"resourceType": "Patient", "id": "warm-up", "gender": "female", "birthDate": "1970-01-01",
                "name": [{"family": "Warmup", "given": ["Test"]}]},
    "vitals": {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {
        "resourceType": "Observation", "id": "warm-up-hr", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": "Heart rate"},
        "subject": {"reference": "Patient/warm-up"}, "effectiveDateTime": "2020-01-01T10:00:00Z",
        "valueQuantity": {"value": 80, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}}}]},
    "conditions": {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {
        "resourceType": "Condition", "id": "warm-up-c", "subject": {"reference": "Patient/warm-up"},
        "code": {"text": "Headache, seen by Dr. Smith on 3/4/2020"}}}]},
    "allergies": {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {
        "resourceType": "AllergyIntolerance", "id": "warm-up-a", "patient": {"reference": "Patient/warm-up"},
        "code": {"text": "Penicillin"}}}]},
    "medications": {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {
        "resourceType": "MedicationRequest", "id": "warm-up-m", "status": "active", "intent": "order",
        "subject": {"reference": "Patient/warm-up"}, "medicationCodeableConcept": {"text": "Aspirin"}}}]},
    "encounter": {"resourceType": "Encounter", "id": "warm-up-e", "status": "in-progress",
                  "class": {"code": "EMER"}, "subject": {"reference": "Patient/warm-up"},
                  # A misspelled complaint: the ESI tables and the spell checker load here, not on a real call.
                  "reasonCode": [{"text": "abdominla pain"}]},
}


def warm_up(runtime: Runtime) -> None:
    """Run the made-up chart through record -> de-identify -> rules -> card (nothing stored or
    queued), then start the AI report path's own state. Never raises: a failure here only costs
    the first call its warm-up."""
    try:
        now = datetime.now(timezone.utc)
        record = build_record(_WARM_UP, as_of=now, encounter_id="warm-up-e")
        deidentified = runtime.deidentifier.record(record)
        result = score_record(deidentified, runtime.rules_config)
        rules_card(result, as_of=deidentified.as_of, skipped=0, stale_after=runtime.rules_config.stale_after)
        if runtime.reports is not None:
            runtime.reports.key_for(deidentified.to_payload())
            runtime.reports.warm()
    except Exception as exc:  # noqa: BLE001
        log.warning("warm-up failed (%s): the first call pays for it", type(exc).__name__)


def patient_view(
    request: HookRequest,
    context: PatientViewContext,
    runtime: Runtime,
    service: Service,
    *,
    now: datetime | None = None,
) -> HookResponse:
    """Answer one patient-view call: the rules card, then the AI card (or "being prepared") when
    AI reports are on; every card is logged before it is returned."""
    started = _request_started()
    now = now or datetime.now(timezone.utc)
    try:
        deidentified = load_deidentified(request, context, runtime, service, now=now)
    except DeidentificationFailed as failed:
        return _rules_card_only(failed, request, runtime, service, now)
    result = score_record(deidentified, runtime.rules_config)
    card = rules_card(
        result,
        as_of=deidentified.as_of,
        skipped=deidentified.stats.skipped,
        stale_after=runtime.rules_config.stale_after,
    )
    outcome = None
    if runtime.reports is not None and runtime.reports.enabled:
        # What is left of the hook deadline, measured from the request's arrival.
        budget_s = (runtime.deadline_ms - runtime.reserve_ms) / 1000 - (time.perf_counter() - started)
        outcome = runtime.reports.request(deidentified, deadline_s=max(budget_s, 0.0))
        # The estimate and the decision to wait, for operators: counts and seconds, never PHI.
        versions = runtime.reports.versions() or ("unknown", "unknown")
        log.info("hookInstance=%s: AI report %s (%s) %s model=%s adapter=%s", request.hookInstance,
                 outcome.status, outcome.reason or "-", outcome.decision or "decision=none",
                 versions[0], versions[1])
    else:
        card = card.model_copy(update={"source": ai_cards.rules_only_source(card.source)})
    extra = ai_cards.report_cards(outcome)
    rule_inputs = result.to_dict()
    runtime.store.log_cards(
        [
            CardLog(
                uuid=card.uuid,
                service_id=service.id,
                hook_instance=request.hookInstance,
                kind="rules",
                indicator=card.indicator,
                summary=card.summary,
                rule_inputs=rule_inputs,
                acuity=int(result.acuity) if result.acuity is not None else None,
                patient_pseudonym=deidentified.pseudonym,
                created_at=now,
            )
        ]
        + [
            CardLog(
                uuid=extra_card.uuid,
                service_id=service.id,
                hook_instance=request.hookInstance,
                kind=kind,
                indicator=extra_card.indicator,
                summary=extra_card.summary,
                rule_inputs=rule_inputs,
                patient_pseudonym=deidentified.pseudonym,
                created_at=now,
                **ai_cards.log_fields(kind, outcome),
            )
            for extra_card, kind in extra
        ]
    )
    if deidentified.stats.skipped:
        log.info("hookInstance=%s: %d FHIR entries skipped as invalid", request.hookInstance, deidentified.stats.skipped)
    return HookResponse(cards=[card] + [c for c, _ in extra])


def _request_started() -> float:
    """perf_counter() at the request's arrival (the app's timer), else now."""
    from flask import g, has_request_context

    if has_request_context() and g.get("started") is not None:
        return float(g.started)
    return time.perf_counter()


def load_deidentified(
    request: HookRequest,
    context: Any,
    runtime: Runtime,
    service: Service,
    *,
    now: datetime | None = None,
) -> DeidentifiedRecord:
    """Prefetch (fetching what is missing) -> PatientRecord -> DeidentifiedRecord; 412 if impossible."""
    now = now or datetime.now(timezone.utc)
    context_values: dict[str, Any] = context.model_dump(exclude_none=True)
    # The FHIR fetch may not eat the whole hook deadline: connect and read each get at most it.
    timeout = min(runtime.fhir_timeout_s, runtime.deadline_ms / 1000)
    try:
        resolved = resolve_prefetch(
            request.prefetch,
            context_values,
            request.fhirServer,
            request.bearer_token,
            timeout=(timeout, timeout),
            templates=service.prefetch,
            required=service.required_prefetch,
        )
    except PrefetchUnavailable as exc:
        raise PreconditionFailed(
            "required FHIR data is missing and could not be fetched from fhirServer: " + ", ".join(exc.keys)
        ) from None
    patient = resolved.data.get("patient")
    if not isinstance(patient, dict) or patient.get("resourceType") != "Patient":
        raise PreconditionFailed("the EHR has no Patient resource for context.patientId")
    if patient.get("id") not in (None, context.patientId):
        raise PreconditionFailed("the prefetched Patient does not match context.patientId")
    try:
        record = build_record(resolved.data, as_of=now, encounter_id=context.encounterId)
    except RecordError:
        raise PreconditionFailed("the Patient resource could not be read") from None
    try:
        deidentified = runtime.deidentifier.record(record)
    except Exception as exc:  # noqa: BLE001 - fail closed, whatever went wrong
        runtime.deid_failures += 1
        # Only the exception type: its text could quote the identifier that leaked.
        log.error("hookInstance=%s: de-identification failed (%s); rules card only, nothing queued",
                  request.hookInstance, type(exc).__name__)
        raise DeidentificationFailed(_score_identified(record, runtime.rules_config),
                                     as_of=record.as_of, skipped=record.stats.skipped) from None
    del record  # no PHI past this point
    return deidentified


class DeidentificationFailed(Exception):
    """Invariant 2 (fail closed): the record could not be de-identified, so it goes nowhere.

    Carries only the rules result, computed inside the API process from the EHR's own data, so
    the nurse still gets the rules card (returned to the EHR alone; never queued or logged).
    """

    def __init__(self, result: RulesResult, *, as_of: datetime, skipped: int) -> None:
        super().__init__("de-identification failed")
        self.result = result
        self.as_of = as_of
        self.skipped = skipped


def _score_identified(record: Any, config: RulesConfig) -> RulesResult:
    days = record.age_days
    return score_vitals(
        record.vitals,
        as_of=record.as_of,
        age_years=min(record.age_years, 90) if record.age_years is not None else None,
        age_days=days if days is not None and days < 365 else None,
        config=config,
        complaint=complaint_findings(record),
    )


def _rules_card_only(
    failed: DeidentificationFailed, request: HookRequest, runtime: Runtime, service: Service, now: datetime
) -> HookResponse:
    card = rules_card(failed.result, as_of=failed.as_of, skipped=failed.skipped,
                      stale_after=runtime.rules_config.stale_after)
    # Logged without rule inputs or pseudonym: those would carry the record's real dates.
    runtime.store.log_cards([
        CardLog(uuid=card.uuid, service_id=service.id, hook_instance=request.hookInstance, kind="rules",
                indicator=card.indicator, summary=card.summary,
                rule_inputs={"deidentification": "failed"},
                acuity=int(failed.result.acuity) if failed.result.acuity is not None else None,
                created_at=now)
    ])
    return HookResponse(cards=[card])
