"""Telemetry primitives the drivers call: request context, tracing, metrics, access log.

Optional backends (prometheus-client, the OpenTelemetry SDK, the B3 propagator) are imported
lazily, so the core install imports this package without them.
"""
