"""FHIR R4 in: parsing (fhir.resources R4B), prefetch, FHIR client, Bulk NDJSON, PatientRecord."""
