"""Multi-host replication: Postgres keeps and orders every change; Redis rings a doorbell."""
