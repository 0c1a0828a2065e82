"""The HTTP layer above the pipeline: app, routes, client auth, limits, OpenAPI, probes, metrics."""
