"""The simulated Assistants v2 service (OpenAI and Azure Foundry Agents flavours) stepscope is tested against.

Public API: `Simulator` (state, workload, faults, `.app`, `.truth()`, `.transport()`, and `.application()`: the
workload as a `SimApplication` sending over HTTP where it must run outside), `SimulatorServer` (uvicorn in a
thread), `Scenario` and `scenario_named` (seeded workload presets), `FaultConfig`/`FaultSpec`, and the clocks
`SimClock` (speed factor) and `ManualClock` (tests).
"""

from __future__ import annotations

from stepscope.simulator.core import SimApplication, SimTransport, Simulator
from stepscope.simulator.faults import ENDPOINTS, FaultConfig, FaultSpec
from stepscope.simulator.scenario import SCENARIOS, ManualClock, Scenario, SimClock, SimTime, scenario_named
from stepscope.simulator.server import SimulatorServer

__all__ = [
    "ENDPOINTS",
    "SCENARIOS",
    "FaultConfig",
    "FaultSpec",
    "ManualClock",
    "Scenario",
    "SimApplication",
    "SimClock",
    "SimTime",
    "SimTransport",
    "Simulator",
    "SimulatorServer",
    "scenario_named",
]
