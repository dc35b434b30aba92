"""The registry of CDS Services this server hosts; discovery is generated from it.

Adding a service (e.g. `appointment-book`) is one `REGISTRY.register(Service(...))` entry: its
hook, id, texts, prefetch templates, the pydantic model of its hook context, and its handler.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import BaseModel

from fhir_adapter.prefetch import PREFETCH_TEMPLATES, REQUIRED_KEYS
from cds_hooks.schemas import (
    DiscoveryResponse,
    HookRequest,
    HookResponse,
    PatientViewContext,
    ServiceDescriptor,
)

if TYPE_CHECKING:
    from cds_hooks.hook import Runtime

Handler = Callable[[HookRequest, BaseModel, "Runtime", "Service"], HookResponse]


@dataclass(frozen=True)
class Service:
    id: str
    hook: str
    title: str
    description: str
    handler: str  # "module:function", imported on first call so discovery stays light
    context_model: type[BaseModel]
    prefetch: Mapping[str, str] = field(default_factory=dict)
    required_prefetch: tuple[str, ...] = ()  # keys without which no guidance is possible
    usage_requirements: str | None = None

    def descriptor(self) -> ServiceDescriptor:
        return ServiceDescriptor(
            hook=self.hook,
            title=self.title,
            description=self.description,
            id=self.id,
            prefetch=dict(self.prefetch) or None,
            usageRequirements=self.usage_requirements,
        )

    def resolve_handler(self) -> Handler:
        module, attr = self.handler.split(":")
        return getattr(importlib.import_module(module), attr)


class Registry:
    def __init__(self) -> None:
        self._services: dict[str, Service] = {}

    def register(self, service: Service) -> Service:
        if service.id in self._services:
            raise ValueError(f"service id already registered: {service.id}")
        self._services[service.id] = service
        return service

    def get(self, service_id: str) -> Service | None:
        return self._services.get(service_id)

    def __iter__(self) -> Iterator[Service]:
        return iter(self._services.values())

    def __len__(self) -> int:
        return len(self._services)

    def discovery(self) -> DiscoveryResponse:
        return DiscoveryResponse(services=[s.descriptor() for s in self])


TRIAGE = Service(
    id="triage",
    hook="patient-view",
    title="Triage CDS: NEWS2 early-warning score and acuity",
    description=(
        "Scores the patient's latest vital signs with NEWS2 (Royal College of Physicians), checks "
        "ESI danger-zone vitals and infant fever, and returns a triage card with a 1-5 "
        "ESI-aligned acuity, what was scored and what is missing."
    ),
    handler="cds_hooks.hook:patient_view",
    context_model=PatientViewContext,
    prefetch=PREFETCH_TEMPLATES,
    required_prefetch=REQUIRED_KEYS,
    usage_requirements=(
        "Needs the patient and their vital-sign Observations, through prefetch or read access to "
        "the FHIR server (fhirServer + fhirAuthorization). Decision support for clinicians; it "
        "does not replace clinical judgement."
    ),
)

def _prescreen() -> Service:
    from cds_hooks.prescreen import AppointmentBookContext

    return Service(
        id="triage-prescreen",
        hook="appointment-book",
        title="Triage CDS: prepare the AI triage report before the visit",
        description=(
            "When an appointment is booked, prepares the patient's preliminary AI triage report from "
            "de-identified data so it is ready when the chart is first opened. Returns no cards."
        ),
        handler="cds_hooks.prescreen:appointment_book",
        context_model=AppointmentBookContext,
        prefetch=PREFETCH_TEMPLATES,
        required_prefetch=REQUIRED_KEYS,
        usage_requirements="Same FHIR data as the triage service (prefetch or FHIR server access).",
    )


REGISTRY = Registry()
REGISTRY.register(TRIAGE)
REGISTRY.register(_prescreen())

