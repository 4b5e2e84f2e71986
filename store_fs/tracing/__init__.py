"""Tracing: OpenTelemetry tracers, span routing to rollouts, and OpenAI instrumentation."""
