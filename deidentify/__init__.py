"""De-identification: HIPAA Safe Harbor for FHIR and free text; the only maker of DeidentifiedRecord."""
