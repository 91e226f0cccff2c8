"""The Jinja sandbox of mapping templates, bounded per row (see :mod:`.limits`): imported
when a mapping has a template, so a mapping without one never imports Jinja."""

from __future__ import annotations

from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment

from undertow.pipeline.map.limits import (
    _PERCENT_WIDTH,
    _WIDTHS,
    BUDGET,
    TEMPLATE_MAX_CHARS,
    TemplateLimit,
    _bounded_filter,
    _bounded_range,
    _check_widths,
    _size,
    too_big,
)


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox with the checks of :class:`Budget` on every operator, call and filter."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals["range"] = _bounded_range
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        BUDGET.check()
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                size = _size(seq)
                if (
                    size is not None
                    and isinstance(times, int)
                    and size * times > TEMPLATE_MAX_CHARS
                ):
                    raise too_big(size * times)
        elif operator == "+":
            a, b = _size(left), _size(right)
            if a is not None and b is not None and a + b > TEMPLATE_MAX_CHARS:
                raise too_big(a + b)
        elif operator == "**":
            big = isinstance(right, int) and abs(right) > 64
            if big and isinstance(left, int | float) and abs(left) > 1:
                raise TemplateLimit(f"the power {right} is too large (at most 64)")
        elif operator == "%" and isinstance(left, str):
            widths = [int(w) for w in _PERCENT_WIDTH.findall(left)]
            if widths and max(widths) > TEMPLATE_MAX_CHARS:
                raise too_big(max(widths))
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        BUDGET.check()
        if getattr(__obj, "__name__", "") in _WIDTHS:
            _check_widths(args, kwargs)
        out = super().call(__context, __obj, *args, **kwargs)
        size = _size(out)
        if size is not None and size > TEMPLATE_MAX_CHARS:
            raise too_big(size)
        return out
