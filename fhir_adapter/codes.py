"""Terminology constants: LOINC vital signs, FHIR code systems, and the resource types we read."""
from __future__ import annotations

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"

OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
VITAL_SIGNS_CATEGORY = "vital-signs"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V3_ACT_PRIORITY = "http://terminology.hl7.org/CodeSystem/v3-ActPriority"

# Vital signs (LOINC).
RESPIRATORY_RATE = "9279-1"
SPO2 = "2708-6"  # oxygen saturation in arterial blood
SPO2_PULSE_OXIMETRY = "59408-5"
SPO2_CODES = (SPO2, SPO2_PULSE_OXIMETRY)
INHALED_O2_FLOW_RATE = "3151-8"
INHALED_O2_CONCENTRATION = "3150-0"
BP_PANEL = "85354-9"
BP_PANEL_MEAN = "96607-7"
SYSTOLIC_BP = "8480-6"
DIASTOLIC_BP = "8462-4"
HEART_RATE = "8867-4"
BODY_TEMPERATURE = "8310-5"
ORAL_TEMPERATURE = "8331-1"
LEVEL_OF_CONSCIOUSNESS = "80288-4"
LEVEL_OF_RESPONSIVENESS = "67775-7"
CONSCIOUSNESS_CODES = (LEVEL_OF_CONSCIOUSNESS, LEVEL_OF_RESPONSIVENESS)
BODY_HEIGHT = "8302-2"
BODY_WEIGHT = "29463-7"
BMI = "39156-5"
BMI_PERCENTILE = "59576-9"
HEAD_CIRCUMFERENCE = "9843-4"
PAIN_SEVERITY = "72514-3"  # 0-10 verbal numeric rating
CHIEF_COMPLAINT = "8661-1"  # Chief complaint - Reported
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
ENCOUNTER_DIAGNOSIS = "encounter-diagnosis"

# Panels whose components are also exposed as stand-alone vitals.
PANEL_COMPONENTS: dict[str, tuple[str, ...]] = {
    BP_PANEL: (SYSTOLIC_BP, DIASTOLIC_BP),
    BP_PANEL_MEAN: (SYSTOLIC_BP, DIASTOLIC_BP),
}

# Observations treated as vitals even when an EHR leaves out the vital-signs category.
VITAL_LOINCS = frozenset(
    {
        RESPIRATORY_RATE, SPO2, SPO2_PULSE_OXIMETRY, BP_PANEL, SYSTOLIC_BP, DIASTOLIC_BP,
        HEART_RATE, BODY_TEMPERATURE, ORAL_TEMPERATURE, LEVEL_OF_CONSCIOUSNESS,
        LEVEL_OF_RESPONSIVENESS, BODY_HEIGHT, BODY_WEIGHT, BMI, BMI_PERCENTILE,
        HEAD_CIRCUMFERENCE, PAIN_SEVERITY, INHALED_O2_FLOW_RATE, INHALED_O2_CONCENTRATION,
    }
)

# Resource types a PatientRecord is built from; the rest of a Bundle is not validated.
RECORD_TYPES = frozenset(
    {
        "Patient", "Condition", "Observation", "AllergyIntolerance", "MedicationRequest",
        "Medication", "Encounter", "DocumentReference", "RelatedPerson", "Practitioner",
        "PractitionerRole", "Organization",
    }
)

# Shared (non patient-compartment) resources of a Bulk export, loaded by id on demand.
SHARED_TYPES = frozenset({"Practitioner", "PractitionerRole", "Organization", "Location", "Device", "Medication"})
