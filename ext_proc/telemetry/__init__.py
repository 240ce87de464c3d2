"""What the gateway reports: Prometheus metrics, OpenTelemetry tracing, and the processors'
reporting interface.
"""
