"""The jackin-remote host agent.

Runs on each host from a zipapp, with python3 >= 3.9 and nothing pip-installed. Everything in this
package must stay importable on Python 3.9: no `match`, and `from __future__ import annotations`
wherever annotations use `X | Y`.
"""

AGENT_VERSION = "0.1.0"
