"""Pure vocabulary and decision functions. No I/O, no third-party imports."""
