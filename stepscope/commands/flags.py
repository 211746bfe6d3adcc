"""The command-line flags that set settings, and which command takes which.

A flag beats the environment, which beats `--config`. Each command shows only the flags that mean something to it:
`serve` and `config check` take them all, `backfill` what reading and exporting history needs, `inspect` only
where the API is and which protocol it speaks.
"""

from __future__ import annotations

SETTING_FLAGS: tuple[tuple[str, str, str], ...] = (
    ("--base-url", "api.base_url", "API base URL (OPENAI_BASE_URL)"),
    ("--protocol", "api.protocol", "the API to read: assistants, agents, ... (STEPSCOPE_PROTOCOL)"),
    ("--flavor", "api.flavor", "openai or azure (STEPSCOPE_FLAVOR)"),
    ("--threads", "poll.threads", "comma-separated thread ids (STEPSCOPE_THREADS)"),
    ("--listen", "server.listen", "HOST:PORT for /metrics and the API (STEPSCOPE_LISTEN)"),
    ("--poll-interval", "poll.interval", "poll interval, e.g. 1s (STEPSCOPE_POLL_INTERVAL)"),
    ("--lookback", "poll.lookback", "history to backfill on first sight, e.g. 1h (STEPSCOPE_LOOKBACK)"),
    ("--state", "state", "checkpoint store path (STEPSCOPE_STATE)"),
    ("--shard", "poll.shard", "INDEX/COUNT of this replica (STEPSCOPE_SHARD)"),
    ("--log-level", "log_level", "DEBUG, INFO, WARNING, ERROR (STEPSCOPE_LOG_LEVEL)"),
    ("--log-format", "log_format", "text or json (STEPSCOPE_LOG_FORMAT)"),
)
"""(flag, setting path, help) of every flag that sets a setting."""
CAPTURE_CONTENT = ("--capture-content", "export.capture_content", "put tool arguments and outputs on spans "
                   "(STEPSCOPE_CAPTURE_CONTENT)")  # fmt: skip
"""The one switch among the setting flags: present means `true`."""
_ALL = (*(flag for flag, _, _ in SETTING_FLAGS), CAPTURE_CONTENT[0])
COMMAND_FLAGS: dict[str, tuple[str, ...]] = {
    "serve": _ALL,
    "check": _ALL,
    "backfill": ("--base-url", "--protocol", "--flavor", "--state", "--log-level", "--log-format", "--capture-content"),
    "inspect": ("--base-url", "--protocol", "--flavor"),
}
"""The setting flags each command takes (`check` is `config check`)."""
CONTAINER_FLAGS = ("--thread", "--session")
"""`inspect`'s flags for the container of the unit it reads: one option under the name of each protocol's
container (`ProtocolFactory.container`)."""
