"""jackin-remote: a terminal-first controller for sandboxed coding agents on servers you own."""

__version__ = "0.1.0"
