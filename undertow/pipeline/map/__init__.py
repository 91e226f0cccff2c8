"""The map stage: turn each model row into the destination's payload, as JSON text.

A sync's ``mappings`` are compiled once (:func:`compile_mapping`) into a tree of nodes; each
call to :meth:`CompiledMapping.map` turns that tree into Polars expressions over the rows'
actual types and evaluates them in one pass, so a payload is written by Polars
(``struct.json_encode``) and never built as a Python dict. Only template fields run Python
per row, and only over the columns the template reads; JSON-text columns are checked with
orjson per value and embedded as they are.

A row that cannot be mapped is *rejected* with its reason (a failed cast, a template that
raised, a NULL identifier, a NaN, a payload over the destination's size limit); ``map``
never raises for a row. :class:`~undertow.errors.MappingError` is raised only for a mapping
that cannot compile (unknown column, bad template syntax, a cast a column's type cannot take).

See ``docs/mapping.md`` for the user-facing reference.
"""

from undertow.pipeline.map.compiled import CompiledMapping, MappedRows, compile_mapping

__all__ = ["CompiledMapping", "MappedRows", "compile_mapping"]
