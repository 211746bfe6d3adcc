"""Configuration: every setting once (`settings`), the parsers of their values (`values`), loading and validation.

`load(env=..., file=..., overrides=...)` returns a frozen `Config` or raises one `ConfigError` listing every problem.
"""

from __future__ import annotations

from stepscope.config.settings import (
    DEFAULT_BASE_URL,
    ENV_SHARD_COUNT,
    ENV_SHARD_INDEX,
    SETTINGS,
    SETTINGS_BY_PATH,
    ApiConfig,
    Config,
    ExportConfig,
    PollConfig,
    ServerConfig,
    Setting,
    env_help,
    load,
    validate,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "ENV_SHARD_COUNT",
    "ENV_SHARD_INDEX",
    "SETTINGS",
    "SETTINGS_BY_PATH",
    "ApiConfig",
    "Config",
    "ExportConfig",
    "PollConfig",
    "ServerConfig",
    "Setting",
    "env_help",
    "load",
    "validate",
]
