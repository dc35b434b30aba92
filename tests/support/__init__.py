"""Test helpers that stand in for systems outside the product (the EHR's FHIR server)."""
