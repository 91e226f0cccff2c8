"""The compiled tree of a sync's mapping: one node per field (column, JSON text, constant,
template, object, list), built once by :class:`Compiler`, which checks every column and
template against the model's schema.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import polars as pl

from undertow.config.models import FieldSpec
from undertow.errors import MappingError, unknown_name
from undertow.pipeline.map.pii import ALIASES, HASHES, NORMALIZERS, VARIANTS, Pii

if TYPE_CHECKING:  # Jinja is imported when a mapping has a template (20 ms otherwise spent)
    from jinja2 import nodes
    from jinja2.environment import Template
    from jinja2.sandbox import ImmutableSandboxedEnvironment


@dataclass
class Column:
    path: str
    column: str
    cast: str | None
    pii: Pii | None = None


@dataclass
class JsonText:
    path: str
    column: str


@dataclass
class Const:
    path: str
    value: Any


@dataclass
class TemplateNode:
    path: str
    template: Template
    columns: list[str]
    uses_row: bool
    cast: str | None
    slot: int = 0


@dataclass
class ObjectNode:
    path: str
    children: list[tuple[str, Node]]


@dataclass
class ListNode:
    path: str
    items: list[Node]


Node = Column | JsonText | Const | TemplateNode | ObjectNode | ListNode


def finalize(value: Any) -> Any:
    """Render NULL as an empty string, not Python's ``None``."""
    return "" if value is None else value


def environment() -> ImmutableSandboxedEnvironment:
    """The sandbox, with each row's time and size bounded (see :mod:`.limits`)."""
    from jinja2 import StrictUndefined

    from undertow.pipeline.map.sandbox import BoundedEnvironment

    return BoundedEnvironment(
        undefined=StrictUndefined, finalize=finalize, autoescape=False, keep_trailing_newline=True
    )


class Compiler:
    def __init__(
        self,
        sync_name: str,
        schema: Mapping[str, pl.DataType],
        json: Set[str] = frozenset(),
        pii_variant: str | None = None,
    ) -> None:
        self.sync = sync_name
        self.pii_variant = pii_variant or "facebook"
        """The destination's rules for ``normalize:`` fields that name no ``variant``."""
        self.schema = schema
        self.json = json
        """Columns of a JSON type: a plain ``column:`` of one embeds its value."""
        self._env: ImmutableSandboxedEnvironment | None = None
        self.read: dict[str, None] = {}
        self.templates: list[TemplateNode] = []

    @property
    def env(self) -> ImmutableSandboxedEnvironment:
        """The sandbox, made for the mapping's first template."""
        if self._env is None:
            self._env = environment()
        return self._env

    def fail(self, path: str, message: str, hint: str | None = None) -> MappingError:
        return MappingError(f"sync {self.sync!r}: {path}: {message}", hint=hint)

    def use(self, path: str, column: str) -> str:
        if column not in self.schema:
            raise self.fail(
                path,
                unknown_name("column", column, self.schema),
                hint="map a column the model's SQL returns, or add it to the model",
            )
        self.read.setdefault(column, None)
        return column

    def node(self, path: str, spec: FieldSpec) -> Node:
        if spec.cast is not None and (spec.object_ is not None or spec.list_ is not None):
            raise self.fail(
                path,
                "`cast` applies to column and template fields, not to object or list fields",
                hint="put the cast on the nested fields",
            )
        if spec.cast is not None and "const" in spec.model_fields_set:
            raise self.fail(
                path,
                "`cast` does not apply to a const",
                hint="write the constant in the type you want, e.g. `const: 3`",
            )
        pii = self.pii(path, spec)
        if spec.column is not None:
            column = self.use(path, spec.column)
            if pii is not None:
                return Column(path, column, None, pii)
            if spec.cast == "json" or (spec.cast is None and column in self.json):
                return JsonText(path, column)
            return Column(path, column, spec.cast)
        if spec.json_ is not None:
            return JsonText(path, self.use(path, spec.json_))
        if spec.template is not None:
            return self.template(path, spec.template, spec.cast)
        if spec.object_ is not None:
            return ObjectNode(
                path, [(k, self.node(f"{path}.{k}", v)) for k, v in spec.object_.items()]
            )
        if spec.list_ is not None:
            return ListNode(path, [self.node(f"{path}[{i}]", v) for i, v in enumerate(spec.list_)])
        return self.const(path, spec.const)

    def pii(self, path: str, spec: FieldSpec) -> Pii | None:
        """``normalize:`` / ``hash:`` / ``variant:`` / ``country:`` checked, or None."""
        if spec.normalize is None and spec.hash_ is None:
            for key in ("variant", "country"):
                if getattr(spec, key) is not None:
                    raise self.fail(
                        path,
                        f"`{key}` applies with `normalize:`",
                        hint="e.g. `{column: phone, normalize: phone, country: US}`",
                    )
            return None
        if spec.column is None:
            raise self.fail(
                path,
                "`normalize` and `hash` apply to column fields",
                hint="e.g. `EMAIL: {column: email, normalize: email, hash: sha256}`",
            )
        if spec.cast is not None:
            raise self.fail(
                path,
                "`cast` does not combine with `normalize` or `hash` (they send text)",
                hint="remove the cast",
            )
        name = spec.normalize
        if name is not None:
            name = ALIASES.get(name, name)
            if name not in NORMALIZERS:
                raise self.fail(
                    path,
                    unknown_name("normaliser", spec.normalize or "", NORMALIZERS),
                    hint="see docs/mapping.md, PII normalisation and hashing",
                )
        if spec.hash_ is not None and spec.hash_ not in HASHES:
            raise self.fail(
                path,
                unknown_name("hash", spec.hash_, HASHES),
                hint="ad platforms match on SHA-256: `hash: sha256`",
            )
        variant = spec.variant or self.pii_variant
        if variant not in VARIANTS:
            raise self.fail(path, unknown_name("variant", variant, VARIANTS))
        country = spec.country
        if country is not None:
            import phonenumbers

            if name != "phone":
                raise self.fail(path, "`country` applies to `normalize: phone`")
            country = country.strip().upper()
            if country not in phonenumbers.SUPPORTED_REGIONS:
                raise self.fail(
                    path,
                    f"`country: {spec.country}` is not an ISO 3166-1 alpha-2 country code",
                    hint="e.g. `country: US` for numbers written without +1",
                )
        return Pii(name, spec.hash_, variant, country)

    def const(self, path: str, value: Any) -> Const:
        try:
            orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
        except TypeError as exc:
            raise self.fail(path, f"the constant cannot be written as JSON: {exc}") from None
        if has_nonfinite(value):
            raise self.fail(path, "the constant holds NaN or Infinity, which JSON cannot carry")
        return Const(path, value)

    def template(self, path: str, source: str, cast: str | None) -> TemplateNode:
        if cast == "json":
            raise self.fail(
                path,
                "`cast: json` does not apply to a template",
                hint="render a string, or map a JSON text column with `json:`",
            )
        from jinja2 import TemplateSyntaxError, meta, nodes

        try:
            ast = self.env.parse(source)
        except TemplateSyntaxError as exc:
            raise self.fail(
                path,
                f"template syntax error on line {exc.lineno}: {exc.message}",
                hint="templates use Jinja2 syntax, e.g. 'Hi {{ first_name }}'",
            ) from None
        reads: list[tuple[int, str | None]] = [
            (n.lineno, n.attr) for n in ast.find_all(nodes.Getattr)
        ]
        reads += [(n.lineno, const_key(n)) for n in ast.find_all(nodes.Getitem)]
        for line, name in reads:
            if isinstance(name, str) and name.startswith("_"):
                raise self.fail(
                    path,
                    f"template line {line} reads {name!r}: templates run in a sandbox "
                    "and cannot reach Python internals (names starting with '_')",
                )
        names = meta.find_undeclared_variables(ast)
        uses_row = "row" in names
        unknown = sorted(
            n for n in names - {"row"} if n not in self.schema and n not in self.env.globals
        )
        if unknown:
            raise self.fail(
                path,
                f"template reads {unknown_name('column', unknown[0], self.schema)}",
                hint="a template sees each model column by name, and `row` (all of them)",
            )
        wanted = set(names)
        if uses_row:
            row_columns = self.row_reads(path, ast)
            wanted |= set(self.schema) if row_columns is None else row_columns
        columns = [c for c in self.schema if c in wanted]
        for column in columns:
            self.use(path, column)
        compiled = TemplateNode(
            path, self.env.from_string(ast), columns, uses_row, cast, slot=len(self.templates)
        )
        self.templates.append(compiled)
        return compiled

    def row_reads(self, path: str, ast: nodes.Template) -> set[str] | None:
        """The columns a template reads through ``row``: ``row.name`` and ``row['name']``
        name them; any other use (``row[k]``, ``row.items()``, ``row | length``) may read
        any column, so None: every column counts (a change to one resends the row)."""
        from jinja2 import nodes

        found: set[str] = set()

        def visit(node: nodes.Node, parent: nodes.Node | None) -> bool:
            if isinstance(node, nodes.Name) and node.name == "row" and node.ctx == "load":
                name: str | None = None
                if isinstance(parent, nodes.Getattr) and parent.node is node:
                    name = parent.attr
                elif isinstance(parent, nodes.Getitem) and parent.node is node:
                    name = const_key(parent)
                if name is None or (name in _ROW_METHODS and name not in self.schema):
                    return False
                if name not in self.schema:
                    raise self.fail(
                        path,
                        f"template reads row.{name}: {unknown_name('column', name, self.schema)}",
                        hint="a template sees each model column by name, and `row` (all of them)",
                    )
                found.add(name)
            return all(visit(child, node) for child in node.iter_child_nodes())

        return found if visit(ast, None) else None


_ROW_METHODS = frozenset({"items", "keys", "values", "get"})


def const_key(node: nodes.Getitem) -> str | None:
    from jinja2 import nodes

    arg = node.arg
    return arg.value if isinstance(arg, nodes.Const) and isinstance(arg.value, str) else None


def has_nonfinite(value: Any) -> bool:
    if isinstance(value, float):
        return value != value or value in (float("inf"), float("-inf"))
    if isinstance(value, dict):
        return any(has_nonfinite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(has_nonfinite(v) for v in value)
    return False
