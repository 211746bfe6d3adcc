"""stepscope: run steps of the Assistants v2 protocol as OpenTelemetry spans and Prometheus metrics."""

__version__ = "0.1.0"
