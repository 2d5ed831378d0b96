"""Pure, synchronous core: models and rules with no I/O, no clock and no event loop."""
