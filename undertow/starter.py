"""``undertow init DIR [--destination TYPE]``: a starter project that runs as it is.

With ``--destination TYPE`` the sync goes to that destination (its demo profile's sync and
mapping), its credentials and URL read from the environment, so it runs against the real
API or against ``undertow fake TYPE``.

It holds a small DuckDB warehouse of customers and a webhook sync whose URL is
``local://inbox.jsonl``: a receiver built into Undertow that listens on 127.0.0.1 for the
run and appends every request to ``inbox.jsonl``. Point ``url`` at a real endpoint when
ready.
"""

from __future__ import annotations

from pathlib import Path

from undertow.errors import UndertowError
from undertow.samples import build_customers

STARTER_YML = """\
# An Undertow project. Docs: docs/config.md in the Undertow repository.
name: {name}

# Where Undertow keeps run history (SQLite here; postgresql://... for teams).
state: sqlite:///.undertow/state.db

sources:
  warehouse:
    type: duckdb
    path: warehouse.duckdb

destinations:
  hook:
    type: webhook
    # The built-in local receiver: requests are appended to inbox.jsonl.
    # Replace with your endpoint, e.g. https://hooks.example.com/customers
    url: local://inbox.jsonl
    batch_size: 500
    # headers: {{Authorization: "Bearer ${{WEBHOOK_TOKEN}}"}}

models:
  active_customers:
    source: warehouse
    file: models/active_customers.sql
    primary_key: customer_id

syncs:
  customers_to_hook:
    model: active_customers
    destination: hook
    mode: mirror          # upsert changed rows, delete rows that leave the model
    mappings:
      id: customer_id
      email: email
      name:
        template: "{{{{ first_name }}}} {{{{ last_name }}}}"
      plan: plan
      seats: seats
      mrr: mrr
      recently_viewed: recently_viewed
      account:
        object:
          country: country
          signed_up: signup_date
"""

MODEL_SQL = """\
-- Customers who are active today. Only the columns a sync maps leave the warehouse.
select customer_id, email, first_name, last_name, plan, seats, mrr, country, signup_date,
       recently_viewed
from customers
where active
"""

GITIGNORE = """\
# Undertow's private state: run history and the snapshots of what destinations accepted
# (customer data). Never commit it.
.undertow/
inbox.jsonl
"""


def destination_yml(type_name: str, name: str) -> str:
    """The starter for a destination type: its demo's sync, its real API from the environment."""
    from undertow.destinations.catalog import demo_profile, project_yml, starter_destination

    _, profile = demo_profile(type_name)
    block = starter_destination(type_name, profile)
    env = type_name.upper().replace("-", "_")
    text = project_yml(
        type_name, profile, name=name, model="file: models/active_customers.sql", destination=block
    )
    return (
        f"# Credentials come from the environment or .env: {env}_TOKEN=...\n"
        f"# Try it without an account: `undertow fake {type_name}` in another shell, then\n"
        f"# {env}_BASE_URL=<the URL it prints> {env}_TOKEN=<its token> undertow run --all\n" + text
    )


def write_starter(
    directory: Path, *, customers: int = 1_000, destination: str | None = None
) -> list[Path]:
    directory = Path(directory)
    main = directory / "undertow.yml"
    name = directory.resolve().name.replace(" ", "_") or "my_project"
    text = (
        STARTER_YML.format(name=name) if destination is None else destination_yml(destination, name)
    )
    files = {
        main: text,
        directory / "models" / "active_customers.sql": MODEL_SQL,
        directory / ".gitignore": GITIGNORE,
    }
    warehouse = directory / "warehouse.duckdb"
    taken = [p for p in [*files, warehouse] if p.exists()]
    if taken:
        raise UndertowError(
            f"not overwriting existing files: {', '.join(str(p) for p in taken)}",
            hint="choose an empty folder: `undertow init my-project`",
        )
    (directory / "models").mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        path.write_text(text)
    build_customers(warehouse, customers)
    return [*files, warehouse]
