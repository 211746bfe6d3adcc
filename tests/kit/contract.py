"""The metric contract as dashboards and rules may use it, and PromQL walking to check them against it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser

from stepscope.contract.metricdefs import ALL_METRICS

REPO = Path(__file__).resolve().parents[2]

# The metric contract: every metric a dashboard or rule may reference (histograms by family name), from the one
# table the exporters register.
CONTRACT_METRICS = frozenset(d.name for d in ALL_METRICS)
HISTOGRAMS = frozenset(d.name for d in ALL_METRICS if d.kind == "histogram")
# Series Prometheus itself produces for every target.
PROMETHEUS_METRICS = frozenset({"up"})


def walk(node: Any, parents: tuple[Any, ...] = ()) -> Iterator[tuple[Any, tuple[Any, ...]]]:
    """Every node of a ``promql_parser`` AST with its ancestors (outermost first), depth first."""
    yield node, parents
    if isinstance(node, promql_parser.AggregateExpr):
        children = [node.expr] + ([node.param] if node.param is not None else [])
    elif isinstance(node, promql_parser.BinaryExpr):
        children = [node.lhs, node.rhs]
    elif isinstance(node, promql_parser.ParenExpr | promql_parser.UnaryExpr | promql_parser.SubqueryExpr):
        children = [node.expr]
    elif isinstance(node, promql_parser.Call):
        children = list(node.args)
    elif isinstance(node, promql_parser.MatrixSelector):
        children = [node.vector_selector]
    else:
        children = []
    for child in children:
        yield from walk(child, (*parents, node))


def metric_names(expr: str) -> set[str]:
    """Metric names selected anywhere in ``expr`` (macros must already be substituted)."""
    tree = promql_parser.parse(expr)
    return {node.name for node, _ in walk(tree) if isinstance(node, promql_parser.VectorSelector) and node.name}


def in_contract(name: str) -> bool:
    """Whether ``name`` is a contract metric, a histogram's _bucket/_count/_sum series, or Prometheus' ``up``."""
    if name in CONTRACT_METRICS or name in PROMETHEUS_METRICS:
        return True
    return any(name == f"{family}{suffix}" for family in HISTOGRAMS for suffix in ("_bucket", "_count", "_sum"))
