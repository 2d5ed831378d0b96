"""File sync (materialized configs, commands, drift) and the declarative source directory."""
