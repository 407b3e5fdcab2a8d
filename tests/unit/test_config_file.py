"""``PONDER_CONFIG``: a good file is the same settings as the variables it replaces; a
bad one is one sentence per error naming the line and the key path; environment
variables and ``.env`` override it; ``Runtime.reload`` swaps pools in place while a
holder of an old client keeps using it."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest

import core.runtime
from app import settings_reference
from app.api.settings import ApiSettings, api_settings_or_exit, load_api_settings
from core.config_file import ConfigFileError, read
from core.runtime import Runtime
from core.settings import PoolSettings, Settings, ToolSettings, get_settings
from core.settings_errors import BadSettings, load_settings, settings_or_exit
from core.simulator import Simulator, SimulatorConfig
from core.simulator.config import Rule
from strategies.protocol import ModelRequest

GOOD = """\
pools:
  small:
    endpoints: ["http://10.0.0.5:8000/v1", "http://10.0.0.6:8000"]
    model: qwen-0.5b
    kind: vllm
    api_key: ${VLLM_KEY}
    max_concurrency: 32
    price_input_per_1k: 0.0001
    price_output_per_1k: 0.0004
  large:
    endpoints: [http://10.0.0.7:8000]
    model: ${LARGE_MODEL:-qwen-1.5b}
tools:
  search:
    url: http://tools:8000/mcp
    env: {PRICE: "$$5"}
api:
  limits:
    default_budget: {max_tokens: 50000, max_seconds: 300}
  tenant_limits:
    acme: {rate: 50/second}
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``ponder.yaml`` that ``PONDER_CONFIG`` names, in a directory with no ``.env``."""
    for name in ("VLLM_KEY", "LARGE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "ponder.yaml"
    monkeypatch.setenv("PONDER_CONFIG", "ponder.yaml")
    monkeypatch.setenv("VLLM_KEY", "k-123")
    return path


def sentences(text: str, path: Path) -> list[str]:
    path.write_text(text)
    with pytest.raises(BadSettings) as caught:
        load_settings()
    return caught.value.sentences


def test_a_good_file_is_the_settings_it_names(config: Path) -> None:
    config.write_text(GOOD)
    settings = load_settings()
    small, large = settings.pools["small"], settings.pools["large"]
    assert small.endpoints == ["http://10.0.0.5:8000", "http://10.0.0.6:8000"]
    assert (small.model, small.kind, small.max_concurrency) == ("qwen-0.5b", "vllm", 32)
    assert small.api_key is not None and small.api_key.get_secret_value() == "k-123"
    assert (small.price_input_per_1k, small.price_output_per_1k) == (0.0001, 0.0004)
    assert large.model == "qwen-1.5b"  # ${LARGE_MODEL:-qwen-1.5b}, unset
    assert settings.tools == {
        "search": ToolSettings(url="http://tools:8000/mcp", env={"PRICE": "$5"})
    }
    api = load_api_settings()
    assert api.limits.default_budget == {"max_tokens": 50000, "max_seconds": 300}
    assert api.limits_for("acme").rate == "50/second"
    assert api.limits_for("other").rate is None


def test_environment_and_dotenv_override_the_file_field_by_field(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config.write_text(GOOD)
    monkeypatch.setenv("PONDER_POOLS__SMALL__MAX_CONCURRENCY", "8")
    monkeypatch.setenv("LARGE_MODEL", "qwen-7b")
    Path(".env").write_text(
        "PONDER_POOLS__LARGE__KIND=llamacpp\nPONDER_POOLS__SMALL__KIND=openai\n"
    )
    monkeypatch.setenv("PONDER_POOLS__SMALL__KIND", "simulator")
    monkeypatch.setenv("PONDER_API_LIMITS__MAX_JOBS_IN_FLIGHT", "3")
    settings = load_settings()
    small, large = settings.pools["small"], settings.pools["large"]
    assert (small.max_concurrency, small.model, small.kind) == (8, "qwen-0.5b", "simulator")
    assert (large.kind, large.model) == ("llamacpp", "qwen-7b")
    api = ApiSettings()
    assert api.limits.max_jobs_in_flight == 3
    assert api.limits.default_budget == {"max_tokens": 50000, "max_seconds": 300}
    # Explicit arguments win too, merged role by role as pydantic-settings merges sources.
    given = Settings(pools={"small": PoolSettings(endpoints=["http://h:1"], model="m")})
    assert (given.pools["small"].model, given.pools["large"].model) == ("m", "qwen-7b")


def test_no_file_and_an_empty_file_configure_nothing(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config.write_text("# nothing yet\n")
    assert load_settings().pools == {}
    monkeypatch.delenv("PONDER_CONFIG")
    config.write_text("not: [valid")
    assert load_settings().pools == {}  # PONDER_CONFIG unset: the file is not read


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            GOOD.replace("max_concurrency: 32", "max_concurrency: 0"),
            ["line 7: pools.small.max_concurrency: Input should be greater than or equal to 1"],
        ),
        (
            GOOD.replace("max_concurrency: 32", "max_concurency: 32"),
            ["line 7: pools.small.max_concurency: unknown key (did you mean max_concurrency?)"],
        ),
        (
            GOOD.replace("    model: ${LARGE_MODEL:-qwen-1.5b}\n", ""),
            ["line 10: pools.large.model: Field required"],
        ),
        (
            GOOD.replace("${VLLM_KEY}", "${VLLM_KEY_TYPO}"),
            ["line 6: pools.small.api_key: environment variable VLLM_KEY_TYPO is not set"],
        ),
        (
            GOOD.replace("url: http://tools:8000/mcp", "command: [python, -m, t]\n    url: x"),
            ["line 14: tools.search: give exactly one of command (stdio) or url (HTTP)"],
        ),
        (
            GOOD.replace("kind: vllm", "kind: tgi\n    timeout: 5"),
            [
                "line 5: pools.small.kind: Input should be 'vllm', 'llamacpp', 'openai' or "
                "'simulator'",
                "line 6: pools.small.timeout: unknown key (did you mean read_timeout_s?)",
            ],
        ),
        (
            "database_url: sqlite://\npool:\n  small: {}\n",
            [
                "line 1: database_url: not read from the config file (it holds pools, tools, "
                "api); set PONDER_DATABASE_URL in the environment",
                "line 2: pool: unknown key (did you mean pools?)",
            ],
        ),
        (
            "pools:\n  small:\n    model: a\n    model: b\n",
            ["line 4: pools.small.model: duplicate key"],
        ),
        (
            "pools:\n  small: [\n",
            ["line 3: not valid YAML: expected the node content, but found '<stream end>'"],
        ),
        ("- pools\n", ["line 1: the file must be a mapping of sections (pools, tools, api)"]),
    ],
)
def test_a_bad_file_is_one_sentence_per_error_naming_line_and_key(
    config: Path, text: str, expected: list[str]
) -> None:
    assert sentences(text, config) == [f"ponder.yaml {sentence}" for sentence in expected]


def test_the_api_section_is_checked_by_the_api_settings(config: Path) -> None:
    config.write_text(
        GOOD.replace("max_seconds: 300}", "max_secs: 300}").replace(
            "acme: {rate: 50/second}", "acme: {rate: fast}\n  executor: celery"
        )
    )
    load_settings()  # core's part is good
    with pytest.raises(BadSettings) as caught:
        load_api_settings()
    assert caught.value.sentences == [
        "ponder.yaml line 19: api.limits.default_budget: unknown budget fields ['max_secs']; "
        "valid: ['max_tokens', 'max_calls', 'max_seconds', 'max_cost']",
        "ponder.yaml line 21: api.tenant_limits.acme.rate: 'fast' is not a rate such as "
        "'20/second' or '100/minute;5/second'",
        "ponder.yaml line 22: api.executor: not read from the config file (it holds limits, "
        "tenant_limits); set PONDER_API_EXECUTOR in the environment",
    ]


def test_the_documented_example_is_a_valid_file(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PONDER_CONFIG", str(settings_reference.EXAMPLE))
    monkeypatch.setenv("VLLM_API_KEY", "k")
    settings, api = load_settings(), load_api_settings()
    assert sorted(settings.pools) == ["large", "small", "verifier"]
    assert settings.pools["verifier"].max_n == 4 and sorted(settings.tools) == ["search"]
    assert api.limits_for("acme").default_budget == {"max_tokens": 20000, "max_seconds": 120}
    assert "```yaml\n" + settings_reference.EXAMPLE.read_text() in settings_reference.render()


def test_entry_points_exit_2_with_the_sentences(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config.write_text(GOOD.replace("max_concurrency: 32", "max_concurency: 32"))
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit) as exited:
            settings_or_exit("ponder api")
    finally:
        get_settings.cache_clear()
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        "ponder api: bad settings: ponder.yaml line 7: pools.small.max_concurency: unknown key "
        "(did you mean max_concurrency?)\n"
    )
    config.write_text(GOOD.replace("50000,", "lots,"))
    with pytest.raises(SystemExit):
        api_settings_or_exit()
    assert capsys.readouterr().err == (
        "ponder api: bad settings: ponder.yaml line 19: api.limits.default_budget.max_tokens: "
        "Input should be a valid integer, unable to parse string as an integer\n"
    )


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError) as caught:
        read(tmp_path / "nope.yaml")
    assert caught.value.sentences == [
        f"{tmp_path / 'nope.yaml'}: cannot read the config file (PONDER_CONFIG): "
        "No such file or directory"
    ]


# -- reload ----------------------------------------------------------------------------


def sim_pool(url: str, model: str = "sim") -> PoolSettings:
    return PoolSettings(endpoints=[url], model=model, kind="simulator")


async def test_reload_swaps_pools_in_place_and_closes_old_ones_when_released(
    sqlite_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(core.runtime, "_RETIRED_POLL_S", 0.01)
    script = SimulatorConfig(rules=[Rule(replies=["old"])])
    with Simulator(script) as old_sim, Simulator(SimulatorConfig(default_reply="new")) as new_sim:
        settings = Settings(
            database_url=sqlite_database_url,
            data_dir=tmp_path,
            _env_file=None,  # type: ignore[call-arg]
        )
        async with Runtime(settings, pools={"small": sim_pool(old_sim.url)}) as rt:
            pools = rt.pools  # what the API's state and the runner hold
            held = pools["small"]  # what a running job holds
            old_http = rt.http
            assert old_http is not None
            request = ModelRequest(prompt="2+2=", max_tokens=4)

            changed = rt.reload(
                settings.model_copy(update={"pools": {"small": sim_pool(new_sim.url)}})
            )
            assert changed == ["pools: small"]
            assert rt.pools is pools and pools["small"] is not held
            assert (await pools["small"].generate(request)).choices[0].text == "new"
            # The job that held the old client finishes on the old server.
            assert (await held.generate(request)).choices[0].text == "old"
            assert not old_http.is_closed
            assert rt.reload(rt.settings) == []  # the same settings: nothing to do

            del held
            gc.collect()  # (refcounting alone frees them here too; a cycle would wait for this)
            for _ in range(200):
                if old_http.is_closed:
                    break
                await asyncio.sleep(0.01)
            assert old_http.is_closed
            assert rt.http is not None and not rt.http.is_closed


async def test_reload_keeps_unchanged_tools_and_replaces_changed_ones(
    sqlite_database_url: str, tmp_path: Path
) -> None:
    tools = {
        "a": ToolSettings(url="http://127.0.0.1:1/mcp"),
        "b": ToolSettings(url="http://127.0.0.1:2/mcp"),
    }
    settings = Settings(
        database_url=sqlite_database_url,
        data_dir=tmp_path,
        tools=tools,
        _env_file=None,  # type: ignore[call-arg]
    )
    async with Runtime(settings) as rt:
        a, b = rt.tools["a"], rt.tools["b"]
        python = rt.tools["python"]
        changed = rt.reload(
            settings.model_copy(
                update={"tools": {"a": tools["a"], "c": ToolSettings(url="http://127.0.0.1:3/mcp")}}
            )
        )
        assert changed == ["tools: b, c"]
        assert sorted(rt.tools) == ["a", "c", "python"]
        assert rt.tools["a"] is a and rt.tools["python"] is python
        assert rt.settings.tool_names() == ["a", "c", "python"]
        assert b not in rt.tools.values()  # closed once runs could no longer hold it
