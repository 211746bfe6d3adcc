"""Configuration: every setting once (`settings`), the parsers of their values (`values`), loading and validation.

`load(env=..., file=..., overrides=...)` returns a frozen `Config` or raises one `ConfigError` listing every problem;
`unknown_env(env)` warns about `STEPSCOPE_*` names it does not read; `shown(config)` is every value as a user writes it.
"""

from __future__ import annotations

from stepscope.config.settings import (
    DEFAULT_BASE_URL,
    ENV_SHARD_COUNT,
    ENV_SHARD_INDEX,
    KNOWN_ENV,
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
    shown,
    unknown_env,
    validate,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "ENV_SHARD_COUNT",
    "ENV_SHARD_INDEX",
    "KNOWN_ENV",
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
    "shown",
    "unknown_env",
    "validate",
]
