"""What the chat destinations share (Slack, Microsoft Teams): a message per row from a template.

A sync's rows become messages through a Jinja template run in Jinja's sandbox (no attribute
of Python internals, no import, no file), with ``StrictUndefined`` so a misspelt field is an
error, not an empty string. The template sees::

    record      the mapped record (record.email, record['plan'])
    key         the row's primary key
    operation   upsert / insert / update / delete (a removed row of a mirror sync: delete)
    sync        the sync's name
    changed     True for a row that existed before (operation update), else False

and the ``tojson`` filter. A template that fails for one row rejects that row with the
reason; it fails ``undertow validate`` when it does not parse.

A digest template (one message per run) sees ``sync``, ``run_id``, ``status``, ``counts``
(``added``, ``changed``, ``removed``, ``succeeded``, ``rejected``, ``failed``... each 0 when
absent), ``lines`` (the rows' messages, the first ``digest_rows`` of them) and ``more`` (how
many rows the digest does not list).
"""

from __future__ import annotations

from typing import Any

import jinja2
import orjson
from jinja2.sandbox import SandboxedEnvironment

from undertow.destinations.base import Batch
from undertow.errors import ConfigError
from undertow.redact import redact, trim


class MessageTemplate:
    """One compiled, sandboxed template of a chat message."""

    def __init__(self, source: str, *, key: str) -> None:
        self.source = source
        env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
        env.policies["json.dumps_function"] = lambda obj, **_: orjson.dumps(obj).decode()
        env.policies["json.dumps_kwargs"] = {}
        try:
            self.template = env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigError(
                f"`{key.rsplit('.', 1)[-1]}` has a template syntax error on its line "
                f"{exc.lineno}: {exc.message}",
                key=key,
                hint="fields are record.<name>; see docs/destinations/slack.md for the variables",
            ) from None

    def render_with(self, **variables: Any) -> str:
        """Render with these variables; raises ValueError with the reason it cannot be built."""
        try:
            return self.template.render(**variables)
        except jinja2.exceptions.SecurityError as exc:
            raise ValueError(f"the template was refused by the sandbox: {exc}") from None
        except jinja2.TemplateError as exc:
            raise ValueError(
                f"the template failed: {type(exc).__name__}: {redact(trim(str(exc)))}"
            ) from None

    def render(self, batch: Batch, index: int, record: dict[str, Any]) -> str:
        """The message of one record; raises ValueError with the reason it cannot be built."""
        try:
            return self.template.render(
                record=record,
                key=batch.keys[index],
                operation=batch.operation.value,
                sync=batch.sync,
                changed=batch.operation.value == "update",
            )
        except jinja2.exceptions.SecurityError as exc:
            raise ValueError(f"the template was refused by the sandbox: {exc}") from None
        except jinja2.TemplateError as exc:
            raise ValueError(
                f"the template failed for this row: {type(exc).__name__}: {redact(trim(str(exc)))}"
            ) from None
