"""The protocols stepscope reads: one package each, made by one registered factory.

`REGISTRY` maps each `STEPSCOPE_PROTOCOL` value to the factory that builds the protocol (`module:attribute`).
Adding a protocol is a package under `stepscope/protocols/` and one line here. A factory is imported on first use,
so `--help` stays fast and a protocol's modules load only when it is chosen. A protocol built elsewhere (a plug-in,
a test's toy protocol) is added with `register(factory)`. The factory contract is in `stepscope.protocols.base`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from stepscope.errors import ConfigError

if TYPE_CHECKING:
    from stepscope.protocols.base import ProtocolFactory

REGISTRY: dict[str, str] = {
    "assistants": "stepscope.protocols.assistants.factory:FACTORY",
    "agents": "stepscope.protocols.agents.factory:FACTORY",
    "responses": "stepscope.protocols.responses.factory:FACTORY",
}
DEFAULT = "assistants"
_REGISTERED: dict[str, ProtocolFactory] = {}


def register(factory: ProtocolFactory) -> None:
    """Make `factory` the protocol named `factory.name`; `ValueError` when that name is taken."""
    if factory.name in REGISTRY or factory.name in _REGISTERED:
        raise ValueError(f"a protocol named {factory.name!r} is registered already")
    _REGISTERED[factory.name] = factory


def unregister(name: str) -> None:
    """Forget a protocol `register` added (a no-op for any other name)."""
    _REGISTERED.pop(name, None)


def names() -> tuple[str, ...]:
    """The registered protocol names, in registration order."""
    return (*REGISTRY, *_REGISTERED)


def get(name: str) -> ProtocolFactory:
    """The factory registered as `name`; `ConfigError` naming `STEPSCOPE_PROTOCOL` for an unknown name."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    target = REGISTRY.get(name)
    if target is None:
        known = ", ".join(names())
        raise ConfigError([f"STEPSCOPE_PROTOCOL (api.protocol): unknown protocol {name!r} (known: {known})"])
    module, _, attribute = target.partition(":")
    factory: ProtocolFactory = getattr(importlib.import_module(module), attribute)
    return factory
