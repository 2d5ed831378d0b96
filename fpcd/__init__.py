"""fpcd: one configuration daemon per host (versioned config, flags, secrets)."""

__version__ = "0.1.0"
