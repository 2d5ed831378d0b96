"""Observability: JSON logs, health, metrics."""
