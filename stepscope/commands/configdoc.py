"""docs/configuration.md, generated from the settings table (`config.SETTINGS`), so the reference cannot drift.

Each row comes from one `Setting`: its environment variable, its file key, the default read from the `Config`
dataclasses, its `help`, the `serve` flag that sets it (`commands.flags.SETTING_FLAGS`) and, where one line is
not enough, a note from `NOTES` below. A test compares the committed file with `render()`; after adding or
changing a setting, regenerate it:

    python -m stepscope.commands.configdoc --write docs/configuration.md

`--check FILE` exits 1 when FILE differs from what `render()` gives.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from stepscope.commands.flags import CAPTURE_CONTENT, SETTING_FLAGS
from stepscope.config import SETTINGS, Config, Setting
from stepscope.config.values import duration_text, parse_duration, parse_size, size_text

# Defaults that are not a plain value: `None` meaning "derived" or "the SDK's own", and the two-field shard.
DEFAULT_TEXT = {
    "api.api_version": "none (`v1` with `STEPSCOPE_FLAVOR=azure`)",
    "poll.max_interval": "4 x `STEPSCOPE_POLL_INTERVAL`",
    "poll.shard": "`0/1`",
    "export.otlp_endpoint": "the SDK's (`http://localhost:4318`, `4317` for gRPC)",
    "export.otlp_metrics_endpoint": "none (the SDK's `http://localhost:4318/v1/metrics` without any endpoint)",
    "export.otlp_metrics_protocol": "`OTEL_EXPORTER_OTLP_PROTOCOL`'s",
}

# What a one-line `help` cannot say. Keyed by setting path; a test checks every key is a setting.
NOTES = {
    "api.api_key": "Sent as `Authorization: Bearer`, or as an `api-key` header with `STEPSCOPE_AUTH=api-key`. "
    "Checked once at start: a rejected key is a configuration error (exit 2).",
    "api.base_url": "For Azure AI Foundry Agents (classic) the project endpoint, "
    "`https://<resource>.services.ai.azure.com/api/projects/<project>` (no `/v1`); for Foundry's Agent Service "
    "(`STEPSCOPE_PROTOCOL=responses`) that endpoint followed by `/openai/v1`. Credentials in the URL are refused.",
    "api.foundry_project_id": "Foundry's own Traces view shows only spans that carry it "
    "(`microsoft.foundry.project.id`). With `STEPSCOPE_PROTOCOL=responses` and `STEPSCOPE_FLAVOR=azure` only.",
    "api.auth": "`token-file` re-reads `STEPSCOPE_TOKEN_FILE` when it changes; `azure-identity` needs the `azure` "
    "extra (`pip install 'stepscope[azure]'`).",
    "api.timeout": "From sending the request to the body's last byte, so a body that trickles in forever ends too "
    '(counted as `code="deadline"` and retried like a timeout).',
    "api.max_body": "Counted after decompression, enforced while reading; a larger body is abandoned "
    '(`code="too_large"`). Sizes: `65536`, `512KiB`, `8MiB`, `1MB`.',
    "api.max_pages": "100 steps per page; a listing also ends at a cursor it was already given.",
    "poll.agents": "Agents API: root agent ids whose sessions are followed. Responses (Foundry): agent names; one "
    "name filters the listing on the server, several are kept by name from one listing of the project.",
    "poll.threads": "The Assistants API cannot list threads: name them here, or register them with `POST /v1/watch`.",
    "poll.max_interval": "Runs that wait (`queued`, `requires_action`) back off by 1.5x per poll up to this.",
    "poll.lookback": "How far back a newly watched thread, or an empty store, is read.",
    "poll.discovery_interval": "Threads whose run is tracked are skipped; a registered thread without runs is "
    "re-listed less and less often (up to every 60 s).",
    "poll.max_tracked_runs": "Runs past it are counted as `tracked_runs_full` and picked up later; raise it above "
    "your peak of active runs.",
    "poll.shard": "Also `STEPSCOPE_SHARD_INDEX` + `STEPSCOPE_SHARD_COUNT` (for a StatefulSet's pod index).",
    "export.capture_content": "Tool arguments and outputs, code interpreter input and logs, cut at 4 KiB.",
    "export.label_cap": "For `model`, `assistant_id`, `tool_name`, `step_type`, `status` and `tool_type`, besides "
    "the protocol's own values; later values read `_other`.",
    "export.max_series_per_metric": "Its `_other` overflow series aside; raise it past about 125 model x assistant "
    "pairs.",
    "export.traces_exporter": "`none` keeps spans out of the backlog altogether; metrics are the same either way.",
    "export.otlp_endpoint": "Over HTTP `/v1/traces` is appended (and `/v1/metrics` for OTLP metrics).",
    "export.otlp_protocol": "Also read from `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`.",
    "export.otlp_headers": "Redacted in logs.",
    "export.schedule_delay_ms": "How long the delivery thread lets a batch gather (the SDK's 5 s would add to "
    "export lag).",
    "export.backlog_max_spans": "Beyond it the oldest spans are dropped and counted (`backlog_full`).",
    "export.backlog_max_age": "Older spans are dropped and counted (`backlog_expired`).",
    "export.metrics_exporter": "`otlp` sends the metrics over OTLP too, beside `/metrics` (which is served either "
    "way): [otlp-metrics.md](otlp-metrics.md).",
    "export.otlp_metrics_endpoint": "Used as is; unset: `OTEL_EXPORTER_OTLP_ENDPOINT` with `/v1/metrics` appended "
    "over HTTP.",
    "export.otlp_metrics_headers": "Unset: `OTEL_EXPORTER_OTLP_HEADERS`. Redacted in logs.",
    "export.metric_export_timeout_ms": "One export, retries included (the specification's default is 30 s).",
    "export.metrics_temporality": "Prometheus's OTLP receiver refuses `delta`; with it, a failed export's increments "
    "are lost.",
    "export.semconv_stability_opt_in": "`gen_ai_latest_experimental`: the newest GenAI token counters instead of "
    "`gen_ai.client.token.usage`.",
    "server.listen": "The container image uses `0.0.0.0:9464`.",
    "server.watch_token": "Without one, `/v1/watch` works only on a loopback-only `STEPSCOPE_LISTEN` (403 elsewhere).",
    "server.watch_rate": "Bursts of twice that; then 429 with `Retry-After` (`watch_rate`).",
    "server.max_watched": "Then 429 (`watch_limit`).",
    "server.proxy_listen": "Unset: no proxy. The application points its base URL here and stepscope tracks the runs "
    "it creates from the upstream's answers ([finding-runs.md](finding-runs.md#the-proxy)).",
    "state": "Must be creatable and writable, and be a stepscope store if it exists: an empty file or another "
    "program's database is refused (exit 2). It also holds the span backlog.",
}

_HEADER = """\
<!-- Generated by `python -m stepscope.commands.configdoc --write docs/configuration.md` from \
stepscope/config/settings.py. Do not edit by hand. -->

# Configuration

Precedence: command-line flags > environment > TOML file (`--config FILE`) > defaults. Every problem is reported at
once, each naming its setting, and the process exits 2. `stepscope config check` prints the effective values as
they are written, with secrets redacted; `serve` logs the same summary at start-up. A `STEPSCOPE_*` variable that
names no setting is ignored with a warning naming the nearest setting (`STEPSCOPE_POLL_INTERVALL`: did you mean
`STEPSCOPE_POLL_INTERVAL`?).

Durations accept `250ms`, `30s`, `5m`, `1h`, `2d` or plain seconds. Sizes accept `65536`, `512KiB`, `8MiB` or `1MB`.
"""

_FILE_EXAMPLE = """\
## The TOML file

The file keys are sections and names; lists may be TOML arrays:

```toml
[api]
base_url = "https://my-resource.services.ai.azure.com/api/projects/my-project"
flavor = "azure"
auth = "azure-identity"

[poll]
threads = ["thread_abc", "thread_def"]
interval = "1s"
lookback = "2h"
```

What each bound protects against, and what happens when it is reached: [reliability.md](reliability.md).
"""


def _default_value(path: str) -> Any:
    config = Config()
    section, _, name = path.rpartition(".")
    obj = getattr(config, section) if section else config
    for f in fields(obj):
        if f.name == name:
            return getattr(obj, name)
    raise KeyError(path)


def default_text(setting: Setting) -> str:
    """The default as a reader would type it: `30s`, `8MiB`, `500000`, or a sentence for derived defaults."""
    if setting.path in DEFAULT_TEXT:
        return DEFAULT_TEXT[setting.path]
    value = _default_value(setting.path)
    if value is None or value in ((), ""):
        return "none"
    if setting.parse is parse_size:
        return f"`{size_text(int(value))}`"
    if isinstance(value, float) and _is_duration(setting):
        return f"`{duration_text(value)}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    return f"`{value}`"


def _is_duration(setting: Setting) -> bool:
    """Whether the setting parses durations (it accepts `1m` and reads it as 60)."""
    try:
        return bool(setting.parse("1m") == parse_duration("1m"))
    except ValueError:
        return False


def _flags() -> dict[str, str]:
    flags = {path: flag for flag, path, _ in SETTING_FLAGS}
    flags[CAPTURE_CONTENT[1]] = CAPTURE_CONTENT[0]
    return flags


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    """The whole of docs/configuration.md."""
    flags = _flags()
    rows = [
        "## Settings",
        "",
        "| Environment variable | File key | `serve` flag | Default | Meaning |",
        "|---|---|---|---|---|",
    ]
    for s in SETTINGS:
        meaning = s.help
        if s.path in NOTES:
            meaning += f". {NOTES[s.path]}"
        flag = f"`{flags[s.path]}`" if s.path in flags else ""
        rows.append(f"| `{s.env}` | `{s.path}` | {flag} | {default_text(s)} | {_cell(meaning)} |")
    return "\n".join([_HEADER, *rows, "", _FILE_EXAMPLE])


def main(argv: Sequence[str] | None = None) -> int:
    """`--write FILE` writes the reference; `--check FILE` exits 1 when FILE is stale. Returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m stepscope.commands.configdoc", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", metavar="FILE", help="write the configuration reference to FILE")
    group.add_argument("--check", metavar="FILE", help="exit 1 if FILE differs from the generated reference")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        Path(args.write).write_text(text, encoding="utf-8")
        return 0
    try:
        current = Path(args.check).read_text(encoding="utf-8")
    except OSError as exc:
        print(f"cannot read {args.check}: {exc.strerror}", file=sys.stderr)
        return 1
    if current != text:
        print(
            f"{args.check} is stale: run python -m stepscope.commands.configdoc --write {args.check}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
