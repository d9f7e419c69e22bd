"""`python -m agent_host` runs the agent from source (tests, local development)."""

import sys

from agent_host.main import main

sys.exit(main())
