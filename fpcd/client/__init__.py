"""Clients of the daemon: the blocking transport the CLI uses."""
