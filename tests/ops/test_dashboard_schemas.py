"""The generated dashboards against Grafana's own model: the typed classes of Grafana's foundation SDK
(`grafana-foundation-sdk==0.0.21`, a dev dependency: Grafana 12's models), which Grafana generates from the schema
it checks dashboards against.

Two checks, for the dashboard and every row, panel, panel options (by panel type), field config and Prometheus
target: nothing the generator writes is unknown to the model (decoding and encoding it again gives back the same
JSON), and every value has the type the model declares (an enum's value, a bool, a number, a nested object)."""

from __future__ import annotations

import enum
import json
import types
import typing
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from grafana_foundation_sdk.cog import plugins
from grafana_foundation_sdk.models import prometheus

with warnings.catch_warnings():  # Grafana 12 prefers its v2 dashboards; it still reads (and we write) the v1 model
    warnings.simplefilter("ignore", DeprecationWarning)
    from grafana_foundation_sdk.models import dashboard as grafana

from stepscope.contract import dashboards
from tests.kit.contract import REPO

FILES = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
JSON = dict[str, Any]
plugins.register_default_plugins()  # panel options decode into each panel type's own class


def _encoded(model: object) -> Any:
    return json.loads(json.dumps(model, default=lambda o: o.to_json() if hasattr(o, "to_json") else str(o)))


def _lost(written: Any, read: Any, where: str) -> Iterator[str]:
    """Every key or value of `written` that is missing or different in `read` (what the model gave back)."""
    if isinstance(written, dict):
        for key, value in written.items():
            if not isinstance(read, dict) or key not in read:
                yield f"{where}/{key}: unknown to Grafana's model"
            else:
                yield from _lost(value, read[key], f"{where}/{key}")
    elif isinstance(written, list) and isinstance(read, list) and len(written) == len(read):
        for i, (a, b) in enumerate(zip(written, read, strict=True)):
            yield from _lost(a, b, f"{where}/{i}")
    elif written != read:
        yield f"{where}: {written!r} came back as {read!r}"


def _fits(value: Any, hint: Any) -> bool:
    """Whether `value` (as decoded by the SDK) has the declared type `hint`; nested models are walked apart."""
    origin = typing.get_origin(hint)
    if hint is typing.Any or hint is object:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arm) for arm in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin is list:
        (item,) = typing.get_args(hint) or (typing.Any,)
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is type(None):
        return value is None
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return isinstance(value, hint) or value in {member.value for member in hint}  # decoded as the raw value
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint) and (hint is not int or not isinstance(value, bool))
    return True


def _mistyped(model: object, where: str) -> Iterator[str]:
    """Every attribute of an SDK model object (and of the models inside it) whose value is not its declared type."""
    if not hasattr(model, "to_json") or isinstance(model, dict):
        return
    hints = typing.get_type_hints(type(model), vars(__import__(type(model).__module__, fromlist=["_"])))
    for name, hint in hints.items():
        value = getattr(model, name, None)
        if not _fits(value, hint):
            yield f"{where}.{name}: {value!r} is not {hint}"
        for i, inner in enumerate(value if isinstance(value, list) else [value]):
            yield from _mistyped(inner, f"{where}.{name}" + (f"[{i}]" if isinstance(value, list) else ""))


def problems(model: JSON, name: str) -> list[str]:
    """What Grafana's model says of one dashboard (every panel and Prometheus target included)."""
    decoded = grafana.Dashboard.from_json(model)
    found = list(_lost(model, _encoded(decoded), name)) + list(_mistyped(decoded, name))
    for panel in dashboards.iter_panels(model["panels"]):
        for target in panel.get("targets", []):
            query = prometheus.Dataquery.from_json(target)
            where = f"{name}: panel {panel['id']} target {target['refId']}"
            found += list(_lost(target, _encoded(query), where)) + list(_mistyped(query, where))
    return found


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_each_dashboard_fits_grafanas_model(path: Path) -> None:
    """The committed dashboard, its rows, panels, options, field config and targets are all known to Grafana's
    model, with the types it declares."""
    assert FILES and problems(json.loads(path.read_text(encoding="utf-8")), path.name) == []


def test_the_model_catches_a_broken_dashboard() -> None:
    """An unknown option, a wrong enum value, a string where a bool belongs and an unknown target field are each
    reported, so the check above can fail."""
    model = dashboards.dashboards()["stepscope-overview.json"]
    panel = next(p for p in dashboards.iter_panels(model["panels"]) if p["type"] == "timeseries")
    panel["options"]["legnd"] = {"show": True}
    panel["options"]["legend"]["displayMode"] = "sideways"
    panel["targets"][0]["instant"] = "yes"
    panel["targets"][0]["exemplars"] = True
    found = "\n".join(problems(model, "broken"))
    assert "options/legnd: unknown" in found
    assert "display_mode: 'sideways'" in found
    assert "instant: 'yes'" in found
    assert "exemplars: unknown" in found
