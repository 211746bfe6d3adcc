"""Configuration layering and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from stepscope.config import ENV_SHARD_COUNT, ENV_SHARD_INDEX, SETTINGS, Config, load, shown, unknown_env
from stepscope.config.values import Secret, Url, parse_duration, parse_size, redact_url, size_text
from stepscope.errors import ConfigError
from stepscope.simulator import cli as simulator_cli

BASE_ENV = {"OPENAI_API_KEY": "sk-test-123"}


class TestLoad:
    def test_defaults(self) -> None:
        """With only a key, every setting takes its documented default."""
        config = load(env=BASE_ENV)
        assert config.api.base_url == "https://api.openai.com/v1"
        assert config.server.listen == "127.0.0.1:9464"
        assert config.poll.interval == 1.0
        assert config.poll.slow_interval == 4.0
        assert config.poll.lookback == 3600.0
        assert config.export.capture_content is False
        assert config.export.service_name == "stepscope"
        assert config.export.otlp_protocol == "http/protobuf"

    def test_precedence_flags_over_env_over_file(self, tmp_path: Path) -> None:
        """A CLI flag beats the environment, which beats the TOML file, which beats the default."""
        file = tmp_path / "stepscope.toml"
        file.write_text('[poll]\ninterval = "7s"\nlookback = "2h"\n[server]\nlisten = "0.0.0.0:1"\n')
        env = {**BASE_ENV, "STEPSCOPE_POLL_INTERVAL": "3", "STEPSCOPE_LISTEN": "127.0.0.1:2"}
        config = load(env=env, file=str(file), overrides={"server.listen": "127.0.0.1:3"})
        assert config.poll.interval == 3.0
        assert config.poll.lookback == 7200.0
        assert config.server.listen == "127.0.0.1:3"

    def test_every_problem_is_reported_with_its_setting(self) -> None:
        """All bad values are collected at once and each names its environment variable and path."""
        env = {
            "STEPSCOPE_POLL_INTERVAL": "-1",
            "STEPSCOPE_LISTEN": "nowhere",
            "STEPSCOPE_THREADS": "thread_ok,bogus",
            "STEPSCOPE_CAPTURE_CONTENT": "maybe",
            "OTEL_TRACES_EXPORTER": "zipkin",
            "STEPSCOPE_SHARD": "3/3",
        }
        with pytest.raises(ConfigError) as info:
            load(env=env)
        text = "\n".join(info.value.problems)
        for name in (
            "STEPSCOPE_POLL_INTERVAL (poll.interval)",
            "STEPSCOPE_LISTEN (server.listen)",
            "STEPSCOPE_THREADS (poll.threads)",
            "STEPSCOPE_CAPTURE_CONTENT (export.capture_content)",
            "OTEL_TRACES_EXPORTER (export.traces_exporter)",
            "STEPSCOPE_SHARD (poll.shard)",
            "OPENAI_API_KEY (api.api_key)",
        ):
            assert name in text
        assert len(info.value.problems) == 7

    def test_unknown_file_setting_is_an_error(self, tmp_path: Path) -> None:
        """A typo in the TOML file is reported rather than silently ignored."""
        file = tmp_path / "c.toml"
        file.write_text("[poll]\nintervall = 3\n")
        with pytest.raises(ConfigError, match=r"poll\.intervall: unknown setting"):
            load(env=BASE_ENV, file=str(file))

    def test_unreadable_file(self, tmp_path: Path) -> None:
        """A missing config file is a configuration error naming --config."""
        with pytest.raises(ConfigError, match="--config: cannot read"):
            load(env=BASE_ENV, file=str(tmp_path / "absent.toml"))

    def test_shard_from_pod_index(self) -> None:
        """STEPSCOPE_SHARD_INDEX and STEPSCOPE_SHARD_COUNT stand in for STEPSCOPE_SHARD."""
        config = load(env={**BASE_ENV, "STEPSCOPE_SHARD_INDEX": "2", "STEPSCOPE_SHARD_COUNT": "5"})
        assert (config.poll.shard_index, config.poll.shard_count) == (2, 5)

    def test_azure_defaults_and_requirements(self) -> None:
        """The Azure flavour needs a project endpoint and gets a default api-version."""
        with pytest.raises(ConfigError, match="OPENAI_BASE_URL"):
            load(env={**BASE_ENV, "STEPSCOPE_FLAVOR": "azure"})
        config = load(
            env={
                **BASE_ENV,
                "STEPSCOPE_FLAVOR": "azure",
                "OPENAI_BASE_URL": "https://x.services.ai.azure.com/api/projects/p",
            }
        )
        assert config.api.api_version == "v1"

    def test_token_file_mode_needs_no_key(self) -> None:
        """token-file auth requires the file setting instead of an API key."""
        with pytest.raises(ConfigError, match="STEPSCOPE_TOKEN_FILE"):
            load(env={"STEPSCOPE_AUTH": "token-file"})
        assert load(env={"STEPSCOPE_AUTH": "token-file", "STEPSCOPE_TOKEN_FILE": "/t"}).api.token_file == "/t"


class TestSecrets:
    def test_repr_and_summary_redact(self) -> None:
        """Neither repr() nor the start-up summary shows the key, the OTLP headers, the watch token or the webhook
        secret."""
        env = {**BASE_ENV, "OTEL_EXPORTER_OTLP_HEADERS": "x-api=hdr-secret", "STEPSCOPE_WATCH_TOKEN": "tok-secret",
               "STEPSCOPE_WEBHOOK_SECRET": " whsec_aG9vay1zZWNyZXQ= "}  # fmt: skip
        config = load(env=env)
        for text in (repr(config), str(config.summary())):
            for secret in ("sk-test-123", "hdr-secret", "tok-secret", "aG9vay1zZWNyZXQ"):
                assert secret not in text
        assert config.api.api_key == "sk-test-123"
        assert config.server.webhook_secret == "whsec_aG9vay1zZWNyZXQ="
        assert repr(Secret("")) == "''"

    def test_url_userinfo_is_redacted(self) -> None:
        """A user:password in an OTLP endpoint shows as *** in repr() and the summary."""
        env = {
            **BASE_ENV,
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-user:otel-pass@collector:4318",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://:bare-pass@collector:4318/v1/traces",
        }
        config = load(env=env)
        summary = config.summary()
        printed = "\n".join(f"{key}  {value}" for key, value in summary.items())  # as `stepscope config check`
        for text in (repr(config), str(summary), printed):
            for secret in ("otel-pass", "otel-user", "bare-pass"):
                assert secret not in text
        assert summary["export.otlp_traces_endpoint"] == "https://***@collector:4318/v1/traces"

    def test_credentials_in_the_api_base_url_are_refused(self) -> None:
        """A user:password (or a lone token) in OPENAI_BASE_URL is one configuration problem that names the setting
        and never echoes the credential: it would be sent as Basic auth instead of the key."""
        for url in ("https://proxy-user:url-pass@proxy.example/v1", "https://sk-token-in-url@api.example/v1"):
            with pytest.raises(ConfigError) as info:
                load(env={**BASE_ENV, "OPENAI_BASE_URL": url})
            (problem,) = info.value.problems
            assert problem.startswith("OPENAI_BASE_URL (api.base_url): must not carry credentials")
            assert "url-pass" not in problem and "sk-token" not in problem

    @pytest.mark.parametrize(
        ("url", "shown"),
        [
            ("https://u:p@ss@host/v1?q=a@b", "https://***@host/v1?q=a@b"),
            ("http://host:8080/path@x", "http://host:8080/path@x"),
            ("https://api.openai.com/v1", "https://api.openai.com/v1"),
        ],
    )
    def test_redact_url(self, url: str, shown: str) -> None:
        """Everything up to the last @ before the path is hidden, an unescaped @ in a password included."""
        assert redact_url(url) == shown
        assert repr(Url(url)) == repr(shown)

    def test_default_config_is_constructible(self) -> None:
        """Config() alone is a valid value object for tests and tools."""
        assert Config().state == "stepscope-state.db"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("90s", 90.0), ("1.5m", 90.0), ("1h", 3600.0), ("2d", 172800.0), ("250ms", 0.25)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    """Durations accept plain seconds and ms/s/m/h/d units."""
    assert parse_duration(text) == seconds


def test_parse_duration_rejects_garbage() -> None:
    """A duration without a number is rejected with a readable reason."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration("soon")


@pytest.mark.parametrize(
    ("text", "size"),
    [("65536", 65536), ("8MiB", 8 * 2**20), ("512 kib", 512 * 2**10), ("1MB", 10**6), ("2GiB", 2 * 2**30)],
)
def test_parse_size(text: str, size: int) -> None:
    """Sizes accept plain bytes and decimal or binary K/M/G units, and are shown in the largest binary unit that
    divides them, which reads back as the same size."""
    assert parse_size(text) == size
    assert parse_size(size_text(size)) == size


def test_read_bounds_default_and_override() -> None:
    """The body cap defaults to 8 MiB and the page cap to 100; both are read from the environment."""
    assert (Config().api.max_body, Config().api.max_pages) == (8 * 2**20, 100)
    config = load(env={**BASE_ENV, "STEPSCOPE_API_MAX_BODY": "1MiB", "STEPSCOPE_MAX_PAGES": "7"})
    assert (config.api.max_body, config.api.max_pages) == (2**20, 7)


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"STEPSCOPE_POLL_INTERVAL": "0"}, "STEPSCOPE_POLL_INTERVAL (poll.interval): must be > 0"),
        ({"STEPSCOPE_CONCURRENCY": "many"}, "STEPSCOPE_CONCURRENCY (poll.concurrency): must be an integer"),
        ({"STEPSCOPE_CONCURRENCY": "0"}, "STEPSCOPE_CONCURRENCY (poll.concurrency): must be > 0"),
        ({"OTEL_BSP_SCHEDULE_DELAY": "soon"}, "OTEL_BSP_SCHEDULE_DELAY (export.schedule_delay_ms): must be a number"),
        ({"OTEL_BSP_SCHEDULE_DELAY": "-5"}, "OTEL_BSP_SCHEDULE_DELAY (export.schedule_delay_ms): must be > 0"),
        ({"OPENAI_BASE_URL": "ftp://x"}, "OPENAI_BASE_URL (api.base_url): must be an http:// or https:// URL"),
        ({"STEPSCOPE_SHARD": "first"}, "STEPSCOPE_SHARD (poll.shard): must be INDEX/COUNT"),
        ({"STEPSCOPE_FLAVOR": "bedrock"}, "STEPSCOPE_FLAVOR (api.flavor): must be one of openai, azure"),
        ({"STEPSCOPE_API_MAX_BODY": "lots"}, "STEPSCOPE_API_MAX_BODY (api.max_body): must be a size such as 8MiB"),
        ({"STEPSCOPE_API_MAX_BODY": "0"}, "STEPSCOPE_API_MAX_BODY (api.max_body): must be > 0"),
        ({"STEPSCOPE_MAX_PAGES": "0"}, "STEPSCOPE_MAX_PAGES (api.max_pages): must be > 0"),
        ({"STEPSCOPE_PROTOCOL": "assistants-v2"}, "STEPSCOPE_PROTOCOL (api.protocol): must be a protocol name"),
        ({"STEPSCOPE_AGENTS": "ok,not ok"}, "STEPSCOPE_AGENTS (poll.agents): invalid agent id(s) not ok"),
        (
            {"STEPSCOPE_FOUNDRY_PROJECT_ID": "my-project"},
            "STEPSCOPE_FOUNDRY_PROJECT_ID (api.foundry_project_id): must be /subscriptions/<id>/resourceGroups/",
        ),
        (
            {"STEPSCOPE_WEBHOOK_SECRET": "whsec_n0t~base64"},
            "STEPSCOPE_WEBHOOK_SECRET (server.webhook_secret): must be whsec_ followed by base64",
        ),
        ({"STEPSCOPE_WEBHOOK_SECRET": "whsec_"}, "STEPSCOPE_WEBHOOK_SECRET (server.webhook_secret): must be whsec_"),
        (
            {"STEPSCOPE_POLL_INTERVAL": "5", "STEPSCOPE_POLL_MAX_INTERVAL": "2"},
            "STEPSCOPE_POLL_MAX_INTERVAL (poll.max_interval): must be >= STEPSCOPE_POLL_INTERVAL",
        ),
    ],
)
def test_each_bad_value_names_its_setting(env: dict[str, str], problem: str) -> None:
    """Every parser rejects a bad value with a reason prefixed by the variable and the setting path; a secret's
    value is never echoed."""
    with pytest.raises(ConfigError) as info:
        load(env={**BASE_ENV, **env})
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems
    assert "n0t~base64" not in str(info.value.problems)


def test_booleans_lists_and_protocol_overrides(tmp_path: Path) -> None:
    """TOML booleans and lists load; the traces-specific protocol variable wins over the generic one."""
    file = tmp_path / "c.toml"
    file.write_text('[poll]\nthreads = ["thread_a", "thread_b"]\n[export]\ncapture_content = true\n')
    env = {**BASE_ENV, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}
    config = load(env=env, file=str(file))
    assert config.poll.threads == ("thread_a", "thread_b")
    assert config.export.capture_content is True
    assert config.export.otlp_protocol == "http/protobuf"
    assert load(env={**BASE_ENV, "STEPSCOPE_CAPTURE_CONTENT": "off"}).export.capture_content is False


def test_invalid_toml_is_reported(tmp_path: Path) -> None:
    """A file that is not TOML is a configuration error naming the file."""
    file = tmp_path / "c.toml"
    file.write_text("[poll\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load(env=BASE_ENV, file=str(file))


def test_config_file_that_is_not_utf8_is_reported(tmp_path: Path) -> None:
    """A --config file that is not UTF-8 text is a configuration error, not a traceback."""
    file = tmp_path / "c.toml"
    file.write_bytes(b"\xff\xfe[poll]\n")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load(env=BASE_ENV, file=str(file))


def test_listen_address_parts() -> None:
    """The listen address splits into host and port, IPv6 brackets included."""
    config = load(env={**BASE_ENV, "STEPSCOPE_LISTEN": "[::1]:9000"})
    assert (config.server.host, config.server.port) == ("::1", 9000)


def test_env_help_lists_every_variable() -> None:
    """--help's environment section names every setting's variable."""
    from stepscope.config import SETTINGS, env_help  # noqa: PLC0415

    text = env_help()
    assert all(s.env in text for s in SETTINGS)


def test_series_budget_setting() -> None:
    """STEPSCOPE_MAX_SERIES_PER_METRIC defaults to 2,000, is read from the environment and must be positive."""
    assert load(env=BASE_ENV).export.max_series_per_metric == 2000
    assert load(env={**BASE_ENV, "STEPSCOPE_MAX_SERIES_PER_METRIC": "500"}).export.max_series_per_metric == 500
    with pytest.raises(ConfigError, match=r"STEPSCOPE_MAX_SERIES_PER_METRIC \(export.max_series_per_metric\)"):
        load(env={**BASE_ENV, "STEPSCOPE_MAX_SERIES_PER_METRIC": "0"})


def test_watch_bounds_settings() -> None:
    """STEPSCOPE_MAX_WATCHED (default 1,000) and STEPSCOPE_WATCH_RATE (default 20/s) load and must be positive."""
    assert (load(env=BASE_ENV).server.max_watched, load(env=BASE_ENV).server.watch_rate) == (1000, 20.0)
    server = load(env={**BASE_ENV, "STEPSCOPE_MAX_WATCHED": "50", "STEPSCOPE_WATCH_RATE": "0.5"}).server
    assert (server.max_watched, server.watch_rate) == (50, 0.5)
    with pytest.raises(ConfigError) as info:
        load(env={**BASE_ENV, "STEPSCOPE_MAX_WATCHED": "0", "STEPSCOPE_WATCH_RATE": "fast"})
    assert info.value.problems == [
        "STEPSCOPE_MAX_WATCHED (server.max_watched): must be > 0",
        "STEPSCOPE_WATCH_RATE (server.watch_rate): must be a number",
    ]


def test_configured_thread_ids_are_matched_whole() -> None:
    """A thread id with anything after a valid prefix (a newline inside the list) is refused."""
    assert load(env={**BASE_ENV, "STEPSCOPE_THREADS": "thread_a,\nthread_b\n"}).poll.threads == ("thread_a", "thread_b")
    with pytest.raises(ConfigError, match="invalid thread id"):
        load(env={**BASE_ENV, "STEPSCOPE_THREADS": "thread_a\nINFO forged"})


class TestUnknownNames:
    def test_a_typo_is_named_with_the_nearest_setting(self) -> None:
        """A STEPSCOPE_ variable that names no setting gets one warning with the nearest known name, not its value."""
        assert unknown_env({"STEPSCOPE_POLL_INTERVALL": "5s-secret-looking"}) == [
            "STEPSCOPE_POLL_INTERVALL is not a stepscope setting and is ignored; did you mean STEPSCOPE_POLL_INTERVAL?"
        ]

    def test_a_name_like_none_points_to_the_help(self) -> None:
        """A name close to no setting points to the list of settings instead of a far-fetched guess."""
        assert unknown_env({"STEPSCOPE_FOO": "1"}) == [
            "STEPSCOPE_FOO is not a stepscope setting and is ignored; `stepscope --help` lists every setting"
        ]

    def test_known_and_foreign_names_are_left_alone(self) -> None:
        """Settings, the shard aliases, the simulator's own variable and other programs' variables are no warning."""
        env = {s.env: "x" for s in SETTINGS}
        env.update({ENV_SHARD_INDEX: "0", ENV_SHARD_COUNT: "2", simulator_cli.ENV_WEBHOOK_SECRET: "whsec_x"})
        env.update({"OPENAI_API_KEYS": "x", "OTEL_SERVICE": "x", "PATH": "/bin"})
        assert unknown_env(env) == []

    def test_one_line_each_sorted(self) -> None:
        """Several unknown names give one line each, in name order."""
        lines = unknown_env({"STEPSCOPE_THREAD": "thread_a", "STEPSCOPE_LISTEN_ADDR": "x"})
        assert [line.split()[0] for line in lines] == ["STEPSCOPE_LISTEN_ADDR", "STEPSCOPE_THREAD"]
        assert lines[1].endswith("did you mean STEPSCOPE_THREADS?")


class TestShownValues:
    def test_values_in_the_units_a_user_writes(self) -> None:
        """Durations, sizes, lists, the shard and secrets read as they are written, not as numbers or counts."""
        env = {
            **BASE_ENV,
            "STEPSCOPE_THREADS": "thread_a,thread_b",
            "STEPSCOPE_API_MAX_BODY": "16MiB",
            "STEPSCOPE_API_TIMEOUT": "250ms",
            "STEPSCOPE_SHARD": "1/3",
        }
        values = shown(load(env=env))
        assert values["poll.threads"] == "thread_a,thread_b"
        assert values["poll.interval"] == "1s"
        assert values["poll.max_interval"] == "4s"  # the default: 4 x the interval
        assert values["poll.lookback"] == "1h"
        assert values["export.backlog_max_age"] == "24h"
        assert values["api.timeout"] == "250ms"
        assert values["api.max_body"] == "16MiB"
        assert values["poll.shard"] == "1/3"
        assert values["api.api_key"] == "***"
        assert values["export.capture_content"] == "false"
        assert values["poll.agents"] == "none"
        assert list(values) == [s.path for s in SETTINGS]

    def test_every_shown_value_loads_back_to_itself(self) -> None:
        """Each value shown, fed back as the setting's text, shows the same again: the text is the value, not a
        rounding of it (secrets and unset settings aside)."""
        config = load(env={**BASE_ENV, "STEPSCOPE_THREADS": "thread_a", "STEPSCOPE_POLL_INTERVAL": "1.5s"})
        values = shown(config)
        secret = {"api.api_key", "export.otlp_headers", "export.otlp_metrics_headers", "server.watch_token"}
        again = {p: v for p, v in values.items() if v != "none" and p not in secret | {"server.webhook_secret"}}
        assert shown(load(env=BASE_ENV, overrides=again)) == values
