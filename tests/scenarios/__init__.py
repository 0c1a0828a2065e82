"""End-to-end clinical scenarios (fixtures/fhir/scenarios)."""
