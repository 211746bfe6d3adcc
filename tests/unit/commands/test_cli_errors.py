"""Every failure an operator can cause is one plain line on stderr with exit code 2, never a traceback.

Commands run in-process through `stepscope.cli.run(argv, env)`; ports are really occupied by a listening socket.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from stepscope import cli
from stepscope.errors import ConfigError
from stepscope.receivers.http import HttpServer
from stepscope.simulator import Simulator, SimulatorServer, scenario_named
from stepscope.simulator import cli as simulator_cli

LISTEN_HINT = "choose another address with --listen or STEPSCOPE_LISTEN"
PORT_HINT = "choose another with --port (0 picks a free one) or --host"
KEY_ENV = {"OPENAI_API_KEY": "sk-test"}
# TEST-NET-1 (RFC 5737): never assigned to a local interface, so binding to it fails at once.
FOREIGN_HOST = "192.0.2.1"


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port some other socket is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """`serve` and `simulate` configure the root logger for the process; undo that after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def simulator() -> Iterator[SimulatorServer]:
    """A quiet simulator over real HTTP, so `serve` has a reachable API with a valid key."""
    with SimulatorServer(Simulator(scenario_named("quiet"))) as server:
        yield server


def failure(capsys: pytest.CaptureFixture[str], argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run `stepscope argv`; return the exit code and the one line it printed on stderr (asserting there is one)."""
    code = cli.run(argv, env or {})
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    lines = out.err.splitlines()
    assert len(lines) == 1, out.err
    return code, lines[0]


class TestBindFailures:
    def test_serve_on_a_busy_port(
        self, capsys: pytest.CaptureFixture[str], busy_port: int, simulator: SimulatorServer, tmp_path: Path
    ) -> None:
        """serve on a port in use prints one line naming the address, the setting and the fix, and exits 2."""
        env = {
            "OPENAI_BASE_URL": simulator.url,
            "OPENAI_API_KEY": simulator.simulator.api_key,
            "STEPSCOPE_STATE": str(tmp_path / "state.db"),
            "STEPSCOPE_LOG_LEVEL": "WARNING",
            "OTEL_TRACES_EXPORTER": "none",
        }
        code, line = failure(capsys, ["serve", "--listen", f"127.0.0.1:{busy_port}"], env)
        assert code == 2
        assert line == (
            f"stepscope: cannot listen on 127.0.0.1:{busy_port} (server.listen): address already in use; {LISTEN_HINT}"
        )

    @pytest.mark.anyio
    async def test_http_server_raises_config_error(self, busy_port: int) -> None:
        """HttpServer.start turns a bind failure into a ConfigError naming server.listen, not an OSError."""
        server = HttpServer(object(), "127.0.0.1", busy_port)
        with pytest.raises(ConfigError) as info:
            await server.start()
        assert info.value.problems == [
            f"cannot listen on 127.0.0.1:{busy_port} (server.listen): address already in use; {LISTEN_HINT}"
        ]
        assert not server.started

    @pytest.mark.anyio
    async def test_http_server_on_a_foreign_address(self) -> None:
        """An address that is not local is a ConfigError that says so."""
        with pytest.raises(ConfigError, match=rf"cannot listen on {FOREIGN_HOST}:9464 .*cannot assign requested"):
            await HttpServer(object(), FOREIGN_HOST, 9464).start()

    def test_simulate_on_a_busy_port(self, capsys: pytest.CaptureFixture[str], busy_port: int) -> None:
        """simulate on a port in use prints one line naming the address and the flags, and exits 2."""
        code, line = failure(capsys, ["simulate", "--port", str(busy_port)])
        assert code == 2
        assert line == f"stepscope: cannot listen on 127.0.0.1:{busy_port}: address already in use; {PORT_HINT}"

    def test_simulate_on_a_foreign_host(self, capsys: pytest.CaptureFixture[str]) -> None:
        """simulate --host with an address that is not local prints one line and exits 2."""
        code, line = failure(capsys, ["simulate", "--host", FOREIGN_HOST, "--port", "0"])
        assert code == 2
        assert line.startswith(f"stepscope: cannot listen on {FOREIGN_HOST}:0: cannot assign requested address;")

    def test_simulator_module_on_a_busy_port(self, capsys: pytest.CaptureFixture[str], busy_port: int) -> None:
        """`python -m stepscope.simulator` on a port in use prints the same one line under its own name."""
        assert simulator_cli.main(["--port", str(busy_port)]) == 2
        err = capsys.readouterr().err
        assert err == (
            f"python -m stepscope.simulator: cannot listen on 127.0.0.1:{busy_port}: address already in use; "
            f"{PORT_HINT}\n"
        )

    def test_simulator_server_raises_config_error(self, busy_port: int) -> None:
        """SimulatorServer raises a ConfigError naming the address instead of an OSError."""
        with pytest.raises(ConfigError) as info:
            SimulatorServer(Simulator(scenario_named("quiet")), "127.0.0.1", busy_port)
        assert info.value.problems == [f"cannot listen on 127.0.0.1:{busy_port}: address already in use"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["demo", "--scenario", "busy"], "argument --scenario: invalid choice: 'busy'"),
        (["demo", "--speed", "-1"], "argument --speed: must be > 0, got -1"),
        (["demo", "--speed", "0"], "argument --speed: must be > 0, got 0"),
        (["demo", "--speed", "nan"], "argument --speed: must be a finite number, got 'nan'"),
        (["demo", "--duration", "0"], "argument --duration: must be > 0, got 0"),
        (["demo", "--duration", "-5"], "argument --duration: must be > 0, got -5"),
        (["demo", "--duration", "soon"], "argument --duration: must be a number, got 'soon'"),
        (["demo", "--seed", "x"], "argument --seed: invalid int value: 'x'"),
        (["demo", "--listen", "nowhere"], "argument --listen: must be HOST:PORT"),
        (["demo", "--listen", "127.0.0.1:99999"], "argument --listen: must be HOST:PORT"),
        (["simulate", "--scenario", "busy"], "argument --scenario: invalid choice: 'busy'"),
        (["simulate", "--speed", "-1"], "argument --speed: must be > 0, got -1"),
        (["simulate", "--speed", "inf"], "argument --speed: must be a finite number, got 'inf'"),
        (["simulate", "--port", "70000"], "argument --port: must be <= 65535, got 70000"),
        (["simulate", "--port", "-1"], "argument --port: must be >= 0, got -1"),
        (["simulate", "--seed", "1.5"], "argument --seed: invalid int value: '1.5'"),
        (["simulate", "--threads", "0"], "argument --threads: must be >= 1, got 0"),
        (["simulate", "--runs-per-second", "-0.5"], "argument --runs-per-second: must be >= 0, got -0.5"),
        (["simulate", "--fault-error-rate", "1.5"], "argument --fault-error-rate: must be <= 1, got 1.5"),
        (["simulate", "--fault-latency-ms", "-3"], "argument --fault-latency-ms: must be >= 0, got -3"),
        (["simulate", "--fault-retry-after", "0"], "argument --fault-retry-after: must be >= 1, got 0"),
        (["simulate", "--request-budget", "0"], "argument --request-budget: must be >= 1, got 0"),
        (["simulate", "--budget-window", "0"], "argument --budget-window: must be > 0, got 0"),
        (["simulate", "--flavor", "bedrock"], "argument --flavor: invalid choice: 'bedrock'"),
        (["backfill", "--thread", "thread_a", "--since", "soon"], "argument --since: must be a duration"),
        (["backfill", "--thread", "thread_a", "--since=-1h"], "argument --since: must be a duration"),
        (["backfill", "--thread", "nope"], "argument --thread: must be one id like thread_..., got 'nope'"),
        (["inspect", "no pe", "--thread", "thread_a"], "argument ID: must be an id like run_... or resp_..., got"),
        (["inspect", "run_a", "--thread", "thread_a,thread_b"], "argument --thread/--session: must be an id like"),
        (["serve", "--listen"], "argument --listen: expected one argument"),
        (["dashboards"], "one of the arguments --write --check is required"),
    ],
)
def test_bad_arguments_are_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], expected: str) -> None:
    """A bad flag value exits 2 with one line: the command, the flag, the reason and where the help is."""
    code, line = failure(capsys, argv)
    assert code == 2
    command = " ".join(["stepscope", argv[0]])
    assert line.startswith(f"{command}: error: {expected}"), line
    assert line.endswith(f"(see `{command} --help`)")


class TestSimulateFaults:
    @pytest.mark.parametrize(
        ("fault", "expected"),
        [
            ("list_steps", "--fault 'list_steps': expected ENDPOINT:KEY=VALUE"),
            ("list_steps:error_rate=often", "--fault 'list_steps:error_rate=often': VALUE must be a number, true"),
            ("list_steps:error_rate=2", "--fault: endpoints.list_steps.error_rate: must be within 0..1"),
            ('list_steps:error_rate="high"', "--fault: a value has the wrong type"),
            ("list_steps:bogus=1", "--fault: unknown fault settings: ['bogus']"),
            ("nowhere:error_rate=0.5", "--fault: endpoints.nowhere: unknown endpoint"),
        ],
    )
    def test_bad_fault(self, capsys: pytest.CaptureFixture[str], fault: str, expected: str) -> None:
        """A bad --fault exits 2 with one line that quotes the flag and says what is wrong."""
        code, line = failure(capsys, ["simulate", "--port", "0", "--fault", fault])
        assert code == 2
        assert line.startswith(f"stepscope: simulate: {expected}"), line

    @pytest.mark.parametrize(
        ("content", "expected"),
        [
            (None, "cannot read it: No such file or directory"),
            ("{not json", "Expecting property name"),
            ("[1, 2]", "must hold a JSON object"),
            ('{"default": 5}', "a value has the wrong type"),
            ('{"default": {"error_rate": "x"}}', "a value has the wrong type"),
            ('{"budget": 5}', "unknown fault keys: ['budget']"),
        ],
    )
    def test_bad_faults_file(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str | None, expected: str
    ) -> None:
        """A missing or malformed --faults-file exits 2 with one line naming the flag and the file."""
        path = tmp_path / "faults.json"
        if content is not None:
            path.write_text(content, encoding="utf-8")
        code, line = failure(capsys, ["simulate", "--port", "0", "--faults-file", str(path)])
        assert code == 2
        assert line.startswith(f"stepscope: simulate: --faults-file {path}: {expected}"), line


class TestConfiguration:
    def test_missing_config_file(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        """A --config file that does not exist is one line naming the flag and the path."""
        path = tmp_path / "absent.toml"
        code, line = failure(capsys, ["config", "check", "--config", str(path)], KEY_ENV)
        assert code == 2
        assert line == f"stepscope: --config: cannot read {path}: No such file or directory"

    def test_config_file_not_toml(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        """A --config file that is not valid TOML is one line naming the flag, the path and the position."""
        path = tmp_path / "bad.toml"
        path.write_text("[poll\ninterval = 1\n", encoding="utf-8")
        code, line = failure(capsys, ["config", "check", "--config", str(path)], KEY_ENV)
        assert code == 2
        assert line.startswith(f"stepscope: --config: {path} is not valid TOML:")
        assert "line 1" in line

    def test_bad_setting_flag(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A bad setting value given as a flag is one line naming the setting."""
        code, line = failure(capsys, ["config", "check", "--poll-interval", "0"], KEY_ENV)
        assert code == 2
        assert line == "stepscope: STEPSCOPE_POLL_INTERVAL (poll.interval): must be > 0"

    def test_every_problem_is_its_own_line(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Several bad settings print one self-contained `stepscope:` line each, and exit 2."""
        env = {"STEPSCOPE_LISTEN": "nowhere", "STEPSCOPE_SHARD": "3/2"}
        assert cli.run(["config", "check"], env) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        lines = err.splitlines()
        assert len(lines) == 3
        assert all(line.startswith("stepscope: ") for line in lines)
        for name in ("OPENAI_API_KEY", "STEPSCOPE_LISTEN", "STEPSCOPE_SHARD"):
            assert sum(name in line for line in lines) == 1


class TestUnknownNames:
    TYPO = (
        "stepscope: warning: STEPSCOPE_POLL_INTERVALL is not a stepscope setting and is ignored; did you mean "
        "STEPSCOPE_POLL_INTERVAL?"
    )

    def test_config_check_flags_them_and_shows_units(self, capsys: pytest.CaptureFixture[str]) -> None:
        """config check warns about a mistyped name with the nearest one, says so in its verdict, and prints values
        as they are written: durations, sizes and the thread ids themselves."""
        env = {**KEY_ENV, "STEPSCOPE_POLL_INTERVALL": "5s", "STEPSCOPE_THREADS": "thread_a,thread_b"}
        assert cli.run(["config", "check"], env) == 0
        out = capsys.readouterr()
        assert out.err.splitlines() == [
            self.TYPO,
            "configuration OK; 1 unknown STEPSCOPE_* variable(s) ignored (see the warnings above)",
        ]
        values = dict(line.split(None, 1) for line in out.out.splitlines())
        assert values["poll.interval"] == "1s"
        assert values["poll.max_interval"] == "4s"
        assert values["api.max_body"] == "8MiB"
        assert values["poll.threads"] == "thread_a,thread_b"

    def test_they_come_before_the_problems(self, capsys: pytest.CaptureFixture[str]) -> None:
        """With an invalid configuration too, the warning comes first and every problem after it, exit 2."""
        assert cli.run(["serve"], {"STEPSCOPE_POLL_INTERVALL": "5s"}) == 2
        assert capsys.readouterr().err.splitlines() == [
            self.TYPO,
            "stepscope: OPENAI_API_KEY (api.api_key): required with STEPSCOPE_AUTH=bearer",
        ]


def test_unwritable_output_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """An OS error while writing (here: the target directory is a file) is one line naming the path, exit 1."""
    blocker = tmp_path / "dashboards"
    blocker.write_text("not a directory", encoding="utf-8")
    code, line = failure(capsys, ["dashboards", "--write", str(blocker)])
    assert code == 1
    assert line == f"stepscope: {blocker}: File exists"


def test_demo_svg_directory_must_exist(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """demo --svg into a missing directory fails before the demo starts, not after it ran."""
    target = tmp_path / "missing" / "view.svg"
    code, line = failure(capsys, ["demo", "--svg", str(target)])
    assert code == 2
    assert f"argument --svg: directory '{target.parent}' does not exist" in line


def test_help_returns_zero(capsys: pytest.CaptureFixture[str]) -> None:
    """run() returns argparse's exit status instead of raising SystemExit, so --help is 0."""
    assert cli.run(["demo", "--help"], {}) == 0
    out = capsys.readouterr().out
    assert "--scenario {faulty,lively,quiet,steady}" in out
