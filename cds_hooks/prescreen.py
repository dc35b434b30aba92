"""`appointment-book` service `triage-prescreen`: precompute the AI report of a booked patient.

It answers `cards: []` at once and only submits the de-identified record to the report queue, so
the report is in the cache when the nurse first opens the chart (if the chart has not changed by
then: the cache key is the de-identified clinical content). Missing data is not an error here:
there is simply nothing to precompute.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from cds_hooks.schemas import HookRequest, HookResponse, _Incoming

if TYPE_CHECKING:
    from cds_hooks.hook import Runtime
    from cds_hooks.services import Service

log = logging.getLogger(__name__)

_FHIR_ID = r"^[A-Za-z0-9\-\.]{1,64}$"


class AppointmentBookContext(_Incoming):
    """CDS Hooks appointment-book context (userId, patientId, encounterId?, appointments)."""

    userId: Annotated[str, Field(min_length=1)]
    patientId: Annotated[str, Field(pattern=_FHIR_ID)]
    encounterId: Annotated[str, Field(pattern=_FHIR_ID)] | None = None
    appointments: dict[str, Any]  # a Bundle of proposed Appointments (not needed to precompute)


def appointment_book(
    request: HookRequest,
    context: AppointmentBookContext,
    runtime: Runtime,
    service: Service,
) -> HookResponse:
    """Submit the booked patient's report for precomputation; never any card."""
    from cds_hooks.errors import PreconditionFailed
    from cds_hooks.hook import DeidentificationFailed, load_deidentified

    reports = runtime.reports
    if reports is None or not reports.enabled:
        return HookResponse(cards=[])
    try:
        deidentified = load_deidentified(request, context, runtime, service)
    except PreconditionFailed:
        log.info("hookInstance=%s: prescreen skipped, patient data unavailable", request.hookInstance)
        return HookResponse(cards=[])
    except DeidentificationFailed:  # fail closed: nothing is queued
        return HookResponse(cards=[])
    status = reports.precompute(deidentified)
    log.info("hookInstance=%s: prescreen %s", request.hookInstance, status)
    return HookResponse(cards=[])
