"""Transports move bytes to a host and run commands there: ssh (asyncssh) or local (subprocess).

A transport owns no policy: retries, concurrency and host states live in the fleet layer.
"""
