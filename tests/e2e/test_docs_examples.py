"""Every YAML and shell example in the README and docs/ is checked, so the docs cannot drift
from the code again.

- YAML (```yaml blocks): parses; every sync, source and destination in it validates against
  its config model (unknown keys are errors); `object:` is one the destination type offers
  (the destination may be defined in another block of the same page); a full project
  (`name:` at the top, with its models' SQL inline) loads and validates offline.
- Shell (```sh blocks and `$ undertow ...` lines of indented examples): every `undertow`
  command parses against the real command line (command, arguments, options).
- The CLI reference's story runs for real on the starter project of `undertow init`: the
  commands docs/cli.md and the README show, in order, each exiting as documented.

A block is left out only with an HTML comment on the line before it,
``<!-- docs-test: skip (reason) -->``, which says why it cannot run here (a cloud
warehouse, a file the page does not show).
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from typer.testing import CliRunner

from undertow import registry
from undertow.cli import app
from undertow.config._yaml import Env, read_yaml
from undertow.config.models import ModelConfig, SyncConfig
from undertow.errors import ConfigError

if TYPE_CHECKING:
    from tests.e2e.conftest import SampleProject

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\b")
FENCE = re.compile(r"^```(\w*)\s*$")
VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    text: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks() -> list[Block]:
    """Fenced blocks, and indented blocks that show shell commands (`$ ...`)."""
    found: list[Block] = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            match = FENCE.match(lines[i])
            skipped = i > 0 and bool(SKIP.search(lines[i - 1]))
            if match:
                end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
                if not skipped:
                    found.append(Block(page, i + 1, match.group(1), "\n".join(lines[i + 1 : end])))
                i = end + 1
                continue
            if lines[i].startswith("    ") and lines[i].strip() and not skipped:
                start = i
                while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                    i += 1
                text = "\n".join(line[4:] for line in lines[start:i])
                if re.search(r"^\$ ", text, re.M):
                    found.append(Block(page, start + 1, "console", text))
                continue
            i += 1
    return found


ALL = blocks()
YAML = [b for b in ALL if b.lang == "yaml"]


def commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every `undertow` command shown in a shell example."""
    out = []
    for block in ALL:
        if block.lang not in ("sh", "console"):
            continue
        for offset, raw in enumerate(block.text.splitlines()):
            line = raw.strip()
            if block.lang == "console":
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            line = line.split(" #", 1)[0].strip()
            if not line.startswith("undertow ") or "|" in line.split("#")[0]:
                continue  # a synopsis (`init | validate | ...`), not a command
            argv = shlex.split(line)[1:]
            if any(a.startswith("[") for a in argv):
                continue  # a usage line with [OPTIONAL] parts
            out.append((f"{block.page.relative_to(ROOT)}:{block.line + offset}", argv))
    return out


# -- YAML ------------------------------------------------------------------------------------


SENTINEL = "__var__"
URLS = {
    "postgres": "postgresql://user:pw@localhost:5432/db",
    "mysql": "mysql://user:pw@localhost:3306/db",
    "mariadb": "mysql://user:pw@localhost:3306/db",
}


def parse(block: Block, tmp: Path, *, raw: bool = False) -> Any:
    """The block as Undertow's own loader reads YAML (keys such as `on:` stay text), every
    ``${VAR}`` set, as in a user's environment (``raw``: left as written)."""
    path = tmp / f"block-{block.line}.yml"
    path.write_text(block.text, encoding="utf-8")
    errors: list[ConfigError] = []
    names = {m.group(1): m.group(0) if raw else SENTINEL for m in VAR.finditer(block.text)}
    data, _ = read_yaml(path, block.id, Env(names, {}), errors)
    assert not errors, "\n".join(map(str, errors))
    return data


def foreign(block: Block) -> bool:
    """A block headed ``# path/to/file.yml`` naming a file that is not Undertow's."""
    first = block.text.lstrip().split("\n", 1)[0]
    match = re.match(r"#\s*(\S+\.ya?ml)\b", first)
    if match is None:
        return False
    name = match.group(1)
    return not (
        name.endswith(("undertow.yml", "undertow.yaml")) or name.startswith(("syncs/", "models/"))
    )


def _urls(cfg: dict[str, Any]) -> dict[str, Any]:
    """A ``url: ${VAR}`` of a connector, as a URL its type takes."""
    if cfg.get("url") == SENTINEL:
        return {**cfg, "url": URLS.get(str(cfg.get("type")), "https://example.com/x")}
    return cfg


def _page_destinations(page: Path, tmp: Path) -> dict[str, str]:
    """Destination name -> type, from every YAML block of the page."""
    types: dict[str, str] = {}
    for block in YAML:
        if block.page != page:
            continue
        data = parse(block, tmp) or {}
        if isinstance(data, dict) and isinstance(data.get("destinations"), dict):
            for name, cfg in data["destinations"].items():
                if isinstance(cfg, dict) and "type" in cfg:
                    types[name] = str(cfg["type"])
    return types


def _check_connectors(data: dict[str, Any], section: str) -> None:
    lookup = registry.source_class if section == "sources" else registry.destination_class
    for name, cfg in (data.get(section) or {}).items():
        assert isinstance(cfg, dict), f"{section}.{name} must be a mapping"
        kind = lookup(str(cfg["type"]))
        kind.Config.model_validate(_urls(cfg))


@pytest.mark.parametrize("block", YAML, ids=[b.id for b in YAML])
def test_yaml_examples_are_valid_configuration(block: Block, tmp_path: Path) -> None:
    data = parse(block, tmp_path)
    if not isinstance(data, dict) or foreign(block):
        return  # another tool's file (dbt's profiles.yml, a schema file): parsing is the check
    _check_connectors(data, "sources")
    _check_connectors(data, "destinations")
    for model in (data.get("models") or {}).values():
        if isinstance(model, dict) and "dbt" not in model:
            ModelConfig.model_validate(model)
    types = _page_destinations(block.page, tmp_path)
    for name, sync in (data.get("syncs") or {}).items():
        # a page may show only the keys it explains: model and destination are then implied
        config = SyncConfig.model_validate({"model": "m", "destination": "d", **sync})
        kind = types.get(config.destination)
        if config.object is None:
            continue
        if kind is not None:
            if registry.destination_class(kind).any_object:
                continue  # any object the vendor has (Salesforce sObjects): validate asks it
            objects = registry.destination_class(kind).objects
            assert objects is not None and config.object in objects, (
                f"sync {name!r}: destination type {kind!r} has no object {config.object!r} "
                f"(it has {objects})"
            )
        else:  # the page does not say the type: some destination must take that object
            offered = {
                o
                for t in registry.destination_types()
                for o in registry.destination_class(t).objects or ()
            }
            assert config.object in offered, (
                f"sync {name!r}: no destination type has object {config.object!r} ({offered})"
            )


FULL = [b for b in YAML if b.text.lstrip().startswith("name:") and "syncs:" in b.text]


@pytest.mark.parametrize("block", FULL, ids=[b.id for b in FULL])
def test_full_project_examples_load_and_validate_offline(
    block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from undertow.project import Project

    data = parse(block, tmp_path, raw=True)
    for section in ("sources", "destinations"):
        for cfg in (data.get(section) or {}).values():
            for match in VAR.finditer(str(cfg.get("url", ""))):
                monkeypatch.setenv(match.group(1), URLS.get(str(cfg["type"]), "https://x.test/"))
    for match in VAR.finditer(block.text):
        if match.group(1) not in os.environ:
            monkeypatch.setenv(match.group(1), "secret")
    for name, model in (data.get("models") or {}).items():
        if isinstance(model, dict) and "file" in model:
            pytest.fail(f"model {name!r} reads {model['file']}, which the page does not show")
    (tmp_path / "undertow.yml").write_text(block.text)
    project = Project.load(str(tmp_path))
    try:
        problems = project.validate(connect=False)
    finally:
        project.close()
    # models run on warehouses the page does not create: a model's SQL failing on its
    # (missing) tables is no problem of the page; every other problem is
    real = [
        p
        for p in problems
        if not (p.key or "").startswith("models.")
        and "on source" not in p.message
        and not p.message.startswith("source '")
    ]
    assert not real, "\n".join(map(str, real))


# -- shell -----------------------------------------------------------------------------------

COMMANDS = commands()


@pytest.mark.parametrize("where_argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_shell_examples_are_real_commands(where_argv: tuple[str, list[str]]) -> None:
    """The command line parses: with ``--help`` added, an unknown command or option fails
    the parse (exit 2) before help is printed; nothing runs."""
    where, argv = where_argv
    result = CliRunner().invoke(app, [*argv, "--help"])
    assert result.exit_code == 0, f"{where}: `undertow {' '.join(argv)}`: {result.output}"


def test_the_cli_reference_story_runs_on_the_starter_project(
    project: SampleProject, tmp_path: Path
) -> None:
    """The commands of docs/cli.md and the README on `undertow init`'s project, in order."""
    folder = tmp_path / "docs-try"
    steps = [
        (["init", str(folder)], 0),
        (["validate"], 0),
        (["plan", "customers_to_hook", "-n", "2"], 0),
        (["run", "--all"], 0),
        (["run", "customers_to_hook"], 0),  # nothing changed
        (["status"], 0),
        (["runs", "customers_to_hook"], 0),
        (["errors", "--sync", "customers_to_hook"], 0),
        (["reset", "customers_to_hook", "--yes"], 0),
        (["runs", "customers_to_hok"], 1),  # the did-you-mean example
    ]
    shown = {tuple(argv) for _, argv in COMMANDS}
    for argv, code in steps:
        documented = (
            tuple(argv) in shown
            or tuple(a.replace(str(folder), "/tmp/docs-try") for a in argv) in shown
        )
        assert documented or argv[0] == "errors", f"`undertow {' '.join(argv)}` is not in the docs"
        where = [] if argv[0] == "init" else ["--project", str(folder)]
        result = project.run(*argv, *where, project=False, cwd=tmp_path)
        assert result.code == code, result
    assert (folder / "inbox.jsonl").exists()
    assert os.path.getsize(folder / "inbox.jsonl") > 0
