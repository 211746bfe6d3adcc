"""`python -m stepscope.simulator`: the simulator without the rest of the CLI."""

from __future__ import annotations

import sys

from stepscope.simulator.cli import main

sys.exit(main())
