"""CDS Hooks 2.0 wire format (requests, responses, feedback, errors) and service declarations."""
