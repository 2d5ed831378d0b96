"""The HTTP doors: REST routes (TCP and Unix socket), health; errors rendered in one place."""
