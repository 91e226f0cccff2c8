"""Loading a project: every failure names the file, the line and the key, and says what to do."""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pytest
from pydantic import SecretStr

from undertow import registry
from undertow.config import LoadedProject, load_project
from undertow.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    Destination,
    DestinationConfig,
    Operation,
)
from undertow.errors import ConfigError, ConfigErrors, SourceError
from undertow.redact import redact
from undertow.sources.base import Source, SourceConfig, missing_driver

pytestmark = pytest.mark.unit

_REAL_ENTRY_POINTS = registry._entry_points


# -- stand-in connectors, so these tests do not depend on the real connector modules --------


class FakeSourceConfig(SourceConfig):
    path: str = ":memory:"
    read_only: bool = True


class FakeSource(Source):
    name: ClassVar[str] = "duckdb"
    Config: ClassVar[type[SourceConfig]] = FakeSourceConfig

    def check(self) -> None:
        raise NotImplementedError

    def describe(self, sql: str, *, model: str) -> pa.Schema:
        raise NotImplementedError

    def extract(self, sql: str, *, model: str, batch_rows: int = 1) -> pa.RecordBatchReader:
        raise NotImplementedError


class FakeDestinationConfig(DestinationConfig):
    url: str = "http://localhost"
    token: SecretStr | None = None


class FakeDestination(Destination):
    name: ClassVar[str] = "webhook"
    Config: ClassVar[type[DestinationConfig]] = FakeDestinationConfig
    capabilities: ClassVar[Capabilities] = Capabilities(
        operations=frozenset({Operation.UPSERT}), max_batch_size=10
    )

    async def check(self) -> None:
        raise NotImplementedError

    async def write_batch(self, batch: Batch) -> BatchResult:
        raise NotImplementedError


@dataclass
class _Point:
    """Looks like an importlib.metadata entry point."""

    value: str
    target: Any

    def load(self) -> Any:
        if isinstance(self.target, BaseException):
            raise self.target
        return self.target


@pytest.fixture(autouse=True)
def fake_connectors(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, dict[str, _Point]]]:
    groups = {
        registry.SOURCES_GROUP: {"duckdb": _Point("tests:FakeSource", FakeSource)},
        registry.DESTINATIONS_GROUP: {
            "webhook": _Point("tests:FakeDestination", FakeDestination),
            "file": _Point("tests:FakeDestination", FakeDestination),
            "hubspot": _Point("tests:FakeDestination", FakeDestination),
        },
    }
    registry.clear_cache()
    monkeypatch.setattr(registry, "_entry_points", lambda group: groups[group])
    yield groups
    registry.clear_cache()


# -- helpers --------------------------------------------------------------------------------

BASE = """\
name: acme
sources:
  warehouse: {type: duckdb, path: warehouse.duckdb}
destinations:
  crm: {type: webhook, url: "https://example.com/hook"}
models:
  active_users:
    source: warehouse
    sql: select id, email, plan from users where active
    primary_key: id
syncs:
  users_to_crm:
    model: active_users
    destination: crm
    mode: upsert
    match: {email: email}
    mappings: {email: email, plan: plan}
"""


def write(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the ``nth`` line containing ``needle``."""
    hits = [i for i, line in enumerate(textwrap.dedent(text).splitlines(), 1) if needle in line]
    return hits[nth - 1]


def load_error(root: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_project(root)
    return info.value


def single(error: ConfigError) -> ConfigError:
    assert not isinstance(error, ConfigErrors), str(error)
    return error


# -- a valid project ------------------------------------------------------------------------


def test_valid_project_loads_with_connector_configs_and_locations(tmp_path: Path) -> None:
    write(tmp_path, "undertow.yml", BASE)
    project = load_project(tmp_path)

    assert isinstance(project, LoadedProject)
    assert project.root == tmp_path.resolve()
    assert project.config.name == "acme"
    assert isinstance(project.sources["warehouse"], FakeSourceConfig)
    assert project.sources["warehouse"].path == "warehouse.duckdb"
    assert isinstance(project.destinations["crm"], FakeDestinationConfig)
    assert project.model_sql == {"active_users": "select id, email, plan from users where active"}
    assert project.config.syncs["users_to_crm"].mappings["plan"].column == "plan"
    main = str(tmp_path / "undertow.yml")
    assert project.where("syncs", "users_to_crm", "mappings", "plan") == (
        main,
        line_of(BASE, "mappings:"),
    )
    # a key not written in the file points at its closest parent
    assert project.where("syncs", "users_to_crm", "batch_size") == (
        main,
        line_of(BASE, "users_to_crm:"),
    )
    assert project.files == [main]


def test_relative_sqlite_state_and_state_dir_are_made_absolute(tmp_path: Path) -> None:
    write(tmp_path, "undertow.yml", BASE)
    project = load_project(tmp_path)
    root = tmp_path.resolve()
    assert project.state_url == f"sqlite:///{root}/.undertow/state.db"
    assert project.state_dir == root / ".undertow"

    write(tmp_path, "undertow.yml", BASE + "state: postgresql://u@localhost/undertow\n")
    assert load_project(tmp_path).state_url == "postgresql://u@localhost/undertow"

    write(tmp_path, "undertow.yml", BASE + "state: sqlite:////var/ut.db\nstate_dir: st\n")
    project = load_project(tmp_path)
    assert project.state_url == "sqlite:////var/ut.db"
    assert project.state_dir == root / "st"


def test_model_sql_is_read_from_file_relative_to_the_project(tmp_path: Path) -> None:
    text = BASE.replace(
        "    sql: select id, email, plan from users where active\n",
        "    file: sql/active.sql\n",
    )
    write(tmp_path, "undertow.yml", text)
    write(tmp_path, "sql/active.sql", "select 42 as id\n")
    assert load_project(tmp_path).model_sql == {"active_users": "select 42 as id\n"}


def test_no_project_file_says_how_to_create_one(tmp_path: Path) -> None:
    error = single(load_error(tmp_path))
    assert "no undertow.yml" in str(error)
    assert "undertow init" in str(error)


# -- malformed YAML -------------------------------------------------------------------------


def test_bad_indentation_names_file_and_line(tmp_path: Path) -> None:
    text = "name: acme\nsources:\n  warehouse:\n    type: duckdb\n   path: x.duckdb\n"
    write(tmp_path, "undertow.yml", text)
    error = single(load_error(tmp_path))
    assert error.file == str(tmp_path / "undertow.yml")
    assert error.line == 5
    assert f"{tmp_path / 'undertow.yml'}:5" in str(error)
    assert "not valid YAML" in str(error)
    assert "indentation" in str(error)


def test_tab_indentation_says_use_spaces(tmp_path: Path) -> None:
    write(tmp_path, "undertow.yml", "name: acme\nsources:\n\twarehouse: {type: duckdb}\n")
    error = single(load_error(tmp_path))
    assert error.line == 3
    assert "undertow.yml:3" in str(error)
    assert "tabs" in str(error)


def test_unbalanced_quote_points_at_the_opening_quote(tmp_path: Path) -> None:
    write(tmp_path, "undertow.yml", 'name: acme\nstate: "sqlite:///x.db\nsources: {}\n')
    error = single(load_error(tmp_path))
    assert error.line == 2
    assert "undertow.yml:2" in str(error)
    assert "quote" in str(error)


def test_missing_colon_gets_a_hint(tmp_path: Path) -> None:
    write(tmp_path, "undertow.yml", "name: acme\nsources:\n  warehouse\n  other: {type: duckdb}\n")
    error = single(load_error(tmp_path))
    assert "undertow.yml:" in str(error)
    assert error.line in (3, 4)
    assert "colon" in str(error)


def test_duplicate_key_is_an_error_naming_both_lines(tmp_path: Path) -> None:
    text = BASE.replace("    mode: upsert\n", "    mode: upsert\n    mode: mirror\n")
    write(tmp_path, "undertow.yml", text)
    error = single(load_error(tmp_path))
    second = line_of(text, "mode:", nth=2)
    assert error.line == second
    assert error.key == "syncs.users_to_crm.mode"
    assert f"undertow.yml:{second} syncs.users_to_crm.mode" in str(error)
    assert f"first defined on line {line_of(text, 'mode:')}" in str(error)


# -- validation -----------------------------------------------------------------------------


def test_unknown_key_suggests_the_closest_allowed_key(tmp_path: Path) -> None:
    text = BASE.replace("mappings:", "mapings:")
    write(tmp_path, "undertow.yml", text)
    error = single(load_error(tmp_path))
    line = line_of(text, "mapings:")
    assert error.line == line
    assert error.key == "syncs.users_to_crm.mapings"
    assert f"undertow.yml:{line} syncs.users_to_crm.mapings" in str(error)
    assert "did you mean 'mappings'?" in str(error)


def test_wrong_type_names_the_key_and_value(tmp_path: Path) -> None:
    text = BASE + "    batch_size: lots\n"
    write(tmp_path, "undertow.yml", text)
    error = single(load_error(tmp_path))
    line = line_of(text, "batch_size:")
    assert f"undertow.yml:{line} syncs.users_to_crm.batch_size" in str(error)
    assert "whole number" in str(error)
    assert "'lots'" in str(error)


def test_bad_mode_suggests_the_closest_mode(tmp_path: Path) -> None:
    text = BASE.replace("mode: upsert", "mode: upsrt")
    write(tmp_path, "undertow.yml", text)
    error = single(load_error(tmp_path))
    assert f"undertow.yml:{line_of(text, 'mode:')} syncs.users_to_crm.mode" in str(error)
    assert "did you mean 'upsert'?" in str(error)


def test_missing_required_key_points_at_its_parent(tmp_path: Path) -> None:
    text = BASE.replace("    primary_key: id\n", "")
    write(tmp_path, "undertow.yml", text)
    error = single(load_error(tmp_path))
    line = line_of(text, "active_users:")
    assert f"undertow.yml:{line} models.active_users.primary_key" in str(error)
    assert "missing required key 'primary_key'" in str(error)


def test_model_with_both_sql_and_file(tmp_path: Path) -> None:
    text = BASE.replace("    primary_key: id\n", "    file: active.sql\n    primary_key: id\n")
    write(tmp_path, "undertow.yml", text)
    write(tmp_path, "active.sql", "select 1 as id")
    error = single(load_error(tmp_path))
    line = line_of(text, "active_users:")
    assert f"undertow.yml:{line} models.active_users" in str(error)
    assert "exactly one of `sql:`" in str(error)


def test_model_file_that_does_not_exist(tmp_path: Path) -> None:
    text = BASE.replace(
        "    sql: select id, email, plan from users where active\n", "    file: sql/gone.sql\n"
    )
    write(tmp_path, "undertow.yml", text)
    error = single(load_error(tmp_path))
    line = line_of(text, "file:")
    assert f"undertow.yml:{line} models.active_users.file" in str(error)
    assert str(tmp_path.resolve() / "sql" / "gone.sql") in str(error)
    assert "does not exist" in str(error)


def test_bad_mapped_field_explains_the_shapes(tmp_path: Path) -> None:
    text = BASE + "    object: contacts\n"
    text = text.replace("mappings: {email: email, plan: plan}", "mappings: {email: email, plan: 5}")
    write(tmp_path, "undertow.yml", text)
    error = single(load_error(tmp_path))
    line = line_of(text, "mappings:")
    assert f"undertow.yml:{line} syncs.users_to_crm.mappings.plan" in str(error)
    assert "column name or a mapping" in str(error)


# -- cross references and connectors --------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "key", "kind", "suggestion"),
    [
        ("source: warehouse", "source: warehous", "models.active_users.source", "source",
         "warehouse"),
        ("model: active_users", "model: active_user", "syncs.users_to_crm.model", "model",
         "active_users"),
        ("destination: crm", "destination: crn", "syncs.users_to_crm.destination",
         "destination", "crm"),
    ],
)  # fmt: skip
def test_unknown_reference_suggests_the_closest_name(
    tmp_path: Path, old: str, new: str, key: str, kind: str, suggestion: str
) -> None:
    text = BASE.replace(old, new)
    write(tmp_path, "undertow.yml", text)
    error = single(load_error(tmp_path))
    line = line_of(text, new)
    assert error.line == line
    assert error.key == key
    assert f"undertow.yml:{line} {key}: unknown {kind}" in str(error)
    assert f"did you mean {suggestion!r}?" in str(error)
    assert f"(known: {suggestion!r})" in str(error)


def test_unknown_connector_type_uses_the_real_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "_entry_points", _REAL_ENTRY_POINTS)
    registry.clear_cache()
    text = BASE.replace("type: webhook", "type: hubspt")
    write(tmp_path, "undertow.yml", text)
    with pytest.raises(ConfigError) as info:
        load_project(tmp_path)
    # the duckdb source may or may not be importable here; the hubspt error must be there
    errors = info.value.errors if isinstance(info.value, ConfigErrors) else [info.value]
    [error] = [e for e in errors if "hubspt" in str(e)]
    line = line_of(text, "hubspt")
    assert f"undertow.yml:{line} destinations.crm.type" in str(error)
    assert "did you mean 'hubspot'?" in str(error)
    assert "'webhook'" in str(error)


def test_missing_connector_type_lists_the_known_types(tmp_path: Path) -> None:
    text = BASE.replace("{type: duckdb, path: warehouse.duckdb}", "{path: warehouse.duckdb}")
    write(tmp_path, "undertow.yml", text)
    error = single(load_error(tmp_path))
    assert f"undertow.yml:{line_of(text, 'warehouse:')} sources.warehouse.type" in str(error)
    assert "needs `type:`" in str(error)
    assert "known types: duckdb" in str(error)


def test_connector_config_is_validated_by_its_own_model(tmp_path: Path) -> None:
    text = BASE.replace(
        "{type: duckdb, path: warehouse.duckdb}", "\n    type: duckdb\n    paht: warehouse.duckdb"
    )
    write(tmp_path, "undertow.yml", text)
    error = single(load_error(tmp_path))
    line = line_of(text, "paht:")
    assert f"undertow.yml:{line} sources.warehouse.paht" in str(error)
    assert "did you mean 'path'?" in str(error)


def test_registry_lets_a_missing_driver_error_through(
    fake_connectors: dict[str, dict[str, _Point]],
) -> None:
    fake_connectors[registry.SOURCES_GROUP]["snowflake"] = _Point(
        "x:Y", missing_driver("snowflake-connector-python", "snowflake")
    )
    with pytest.raises(SourceError, match=r'pip install "undertow\[snowflake\]"'):
        registry.source_class("snowflake")


def test_registry_turns_a_plain_import_error_into_a_hint(
    fake_connectors: dict[str, dict[str, _Point]],
) -> None:
    fake_connectors[registry.DESTINATIONS_GROUP]["braze"] = _Point(
        "x:Y", ModuleNotFoundError("No module named 'brazelib'")
    )
    with pytest.raises(ConfigError, match="brazelib") as info:
        registry.destination_class("braze")
    assert 'pip install "undertow[braze]"' in str(info.value)


def test_registry_lists_types_and_caches_classes(
    fake_connectors: dict[str, dict[str, _Point]],
) -> None:
    assert registry.source_types() == ["duckdb"]
    assert registry.destination_types() == ["file", "hubspot", "webhook"]
    assert registry.source_class("duckdb") is FakeSource
    fake_connectors[registry.SOURCES_GROUP]["duckdb"] = _Point("x:Y", ImportError("gone"))
    assert registry.source_class("duckdb") is FakeSource  # cached
    with pytest.raises(ConfigError, match="unknown source type 'duckbd'; did you mean 'duckdb'"):
        registry.source_class("duckbd")


def test_real_registry_knows_the_declared_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_entry_points", _REAL_ENTRY_POINTS)
    registry.clear_cache()
    assert "duckdb" in registry.source_types()
    assert {"webhook", "file"} <= set(registry.destination_types())


# -- ${ENV} secrets and .env ----------------------------------------------------------------


def test_missing_env_variable_says_how_to_set_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("UT_TEST_HUBSPOT_TOKEN", raising=False)
    text = BASE.replace('url: "https://example.com/hook"', 'token: "${UT_TEST_HUBSPOT_TOKEN}"')
    write(tmp_path, "undertow.yml", text)
    error = single(load_error(tmp_path))
    line = line_of(text, "UT_TEST_HUBSPOT_TOKEN")
    assert f"undertow.yml:{line} destinations.crm.token" in str(error)
    assert "UT_TEST_HUBSPOT_TOKEN is not set" in str(error)
    assert "export UT_TEST_HUBSPOT_TOKEN=..." in str(error)
    assert ".env" in str(error)


def test_resolved_secret_is_substituted_and_redacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = f"pat-{uuid.uuid4().hex}"
    monkeypatch.setenv("UT_TEST_TOKEN", secret)
    # a plain text field: only the ${ENV} substitution can have registered it
    text = BASE.replace("https://example.com/hook", "https://example.com/${UT_TEST_TOKEN}")
    write(tmp_path, "undertow.yml", text)
    config = load_project(tmp_path).destinations["crm"]
    assert isinstance(config, FakeDestinationConfig)
    assert config.url == f"https://example.com/{secret}"
    assert redact(f"calling with {secret}!") == "calling with ***!"


def test_secret_fields_written_in_clear_are_registered_too(tmp_path: Path) -> None:
    secret = f"pat-{uuid.uuid4().hex}"
    text = BASE.replace('url: "https://example.com/hook"', f"token: {secret}")
    write(tmp_path, "undertow.yml", text)
    config = load_project(tmp_path).destinations["crm"]
    assert isinstance(config, FakeDestinationConfig)
    assert config.token is not None
    assert config.token.get_secret_value() == secret
    assert redact(f"calling with {secret}!") == "calling with ***!"


def test_env_default_and_partial_substitution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("UT_TEST_UNSET", raising=False)
    monkeypatch.setenv("UT_TEST_HOST", "hooks.example.com")
    text = BASE.replace(
        'url: "https://example.com/hook"', 'url: "https://${UT_TEST_HOST}/${UT_TEST_UNSET:-v1}"'
    )
    text = text.replace(
        "{email: email, plan: plan}", '{email: email, "${NOT_A_KEY_SUBSTITUTION}": plan}'
    )
    write(tmp_path, "undertow.yml", text)
    project = load_project(tmp_path)
    config = project.destinations["crm"]
    assert isinstance(config, FakeDestinationConfig)
    assert config.url == "https://hooks.example.com/v1"
    mappings = project.config.syncs["users_to_crm"].mappings
    assert "${NOT_A_KEY_SUBSTITUTION}" in mappings  # keys are never substituted


def test_dollar_dollar_is_a_literal_dollar(tmp_path: Path) -> None:
    text = BASE.replace("where active", "where note = '$${literal}'")
    write(tmp_path, "undertow.yml", text)
    assert "'${literal}'" in load_project(tmp_path).model_sql["active_users"]


def test_dotenv_file_is_read_without_overriding_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("UT_TEST_FROM_DOTENV", raising=False)
    monkeypatch.setenv("UT_TEST_FROM_ENV", "from-the-environment")
    write(
        tmp_path,
        ".env",
        """\
        # secrets for local runs
        export UT_TEST_FROM_DOTENV="dotenv value"
        UT_TEST_FROM_ENV=from-the-dotenv-file  # overridden by the real environment
        """,
    )
    text = BASE.replace(
        'url: "https://example.com/hook"',
        'url: "${UT_TEST_FROM_DOTENV}", token: "${UT_TEST_FROM_ENV}"',
    )
    write(tmp_path, "undertow.yml", text)
    config = load_project(tmp_path).destinations["crm"]
    assert isinstance(config, FakeDestinationConfig)
    assert config.url == "dotenv value"
    assert config.token is not None
    assert config.token.get_secret_value() == "from-the-environment"


def test_malformed_dotenv_line_is_reported(tmp_path: Path) -> None:
    write(tmp_path, ".env", "GOOD=1\nthis is not an assignment\n")
    write(tmp_path, "undertow.yml", BASE)
    error = single(load_error(tmp_path))
    assert f"{tmp_path / '.env'}:2" in str(error)
    assert "KEY=VALUE" in str(error)


# -- models/ and syncs/ folders -------------------------------------------------------------

SPLIT_MAIN = """\
name: acme
sources:
  warehouse: {type: duckdb}
destinations:
  crm: {type: webhook}
"""

SPLIT_MODELS = """\
models:
  active_users:
    source: warehouse
    sql: select 1 as id
    primary_key: id
"""

SPLIT_SYNCS = """\
destinations:
  audit: {type: file}
syncs:
  users_to_crm:
    model: active_users
    destination: crm
    mappings:
      plan: plan
"""


def test_models_and_syncs_folders_are_merged(tmp_path: Path) -> None:
    write(tmp_path, "undertow.yml", SPLIT_MAIN)
    write(tmp_path, "models/users.yml", SPLIT_MODELS)
    write(tmp_path, "syncs/crm/users.yaml", SPLIT_SYNCS)
    project = load_project(tmp_path)
    assert set(project.config.models) == {"active_users"}
    assert set(project.config.syncs) == {"users_to_crm"}
    assert set(project.destinations) == {"crm", "audit"}
    syncs_file = str(tmp_path / "syncs" / "crm" / "users.yaml")
    assert project.where("syncs", "users_to_crm", "mappings", "plan") == (
        syncs_file,
        line_of(SPLIT_SYNCS, "plan:"),
    )
    assert project.where("models", "active_users") == (str(tmp_path / "models" / "users.yml"), 2)
    assert project.files[0] == str(tmp_path / "undertow.yml")
    assert syncs_file in project.files


def test_error_in_a_syncs_file_points_into_that_file(tmp_path: Path) -> None:
    write(tmp_path, "undertow.yml", SPLIT_MAIN)
    write(tmp_path, "models/users.yml", SPLIT_MODELS)
    text = SPLIT_SYNCS.replace("mappings:", "mapings:")
    write(tmp_path, "syncs/users.yml", text)
    error = single(load_error(tmp_path))
    line = line_of(text, "mapings:")
    assert f"{tmp_path / 'syncs' / 'users.yml'}:{line} syncs.users_to_crm.mapings" in str(error)


def test_same_name_in_two_files_names_both(tmp_path: Path) -> None:
    write(tmp_path, "undertow.yml", BASE)
    write(tmp_path, "models/users.yml", SPLIT_MODELS)
    error = single(load_error(tmp_path))
    main, other = tmp_path / "undertow.yml", tmp_path / "models" / "users.yml"
    assert f"in {main}:{line_of(BASE, 'active_users:')}" in str(error)
    assert f"in {other}:2" in str(error)
    assert error.file == str(other)
    assert error.key == "models.active_users"


def test_project_keys_are_not_allowed_in_folder_files(tmp_path: Path) -> None:
    write(tmp_path, "undertow.yml", BASE)
    write(tmp_path, "syncs/more.yml", "name: other\nsync:\n  x: {}\n")
    error = load_error(tmp_path)
    assert isinstance(error, ConfigErrors)
    text = str(error)
    assert f"{tmp_path / 'syncs' / 'more.yml'}:1 name: unknown key 'name'" in text
    assert f"{tmp_path / 'syncs' / 'more.yml'}:2 sync: unknown key 'sync'" in text
    assert "did you mean 'syncs'?" in text


# -- several errors at once -----------------------------------------------------------------


def test_several_errors_are_reported_together_in_file_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("UT_TEST_MISSING", raising=False)
    text = (
        BASE.replace("source: warehouse", "source: warehous")
        .replace('url: "https://example.com/hook"', 'url: "${UT_TEST_MISSING}"')
        .replace("mappings:", "mapings:")
        + "    batch_size: lots\n"
    )
    write(tmp_path, "undertow.yml", text)
    write(tmp_path, "syncs/more.yml", "syncs:\n  other:\n    model: nope\n    destination: crm\n")
    error = load_error(tmp_path)
    assert isinstance(error, ConfigErrors)
    found = [(e.file, e.line, e.key) for e in error.errors]
    main, more = str(tmp_path / "undertow.yml"), str(tmp_path / "syncs" / "more.yml")
    assert found == [
        (main, line_of(text, "UT_TEST_MISSING"), "destinations.crm.url"),
        (main, line_of(text, "source: warehous"), "models.active_users.source"),
        (main, line_of(text, "mapings:"), "syncs.users_to_crm.mapings"),
        (main, line_of(text, "batch_size:"), "syncs.users_to_crm.batch_size"),
        (more, 3, "syncs.other.model"),
    ]
    assert "5 problem(s)" in str(error)
