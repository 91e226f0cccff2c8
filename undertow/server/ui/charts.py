"""Charts of the web UI, drawn on the server as inline SVG: no chart library, no script.

Every number comes from run records (``RunRecord.as_dict()``, the API's own answer); the
output is markup built from numbers and escaped labels only.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from markupsafe import Markup

OUTCOMES = (("succeeded", "#2da44e"), ("rejected", "#fb8500"), ("failed", "#cf222e"))


def sparkline(values: Sequence[float], *, width: int = 120, height: int = 26) -> Markup:
    """A line of ``values`` (oldest first), with the last point marked."""
    if not values:
        return Markup('<span class="muted">-</span>')
    top = max(values) or 1.0
    step = width / max(1, len(values) - 1)
    points = [
        (round(i * step, 1), round(height - 3 - (v / top) * (height - 6), 1))
        for i, v in enumerate(values)
    ]
    if len(points) == 1:
        points = [(0.0, points[0][1]), (float(width), points[0][1])]
    path = " ".join(f"{x},{y}" for x, y in points)
    x, y = points[-1]
    return Markup(
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="trend">'
        f'<polyline points="{path}" fill="none" stroke="#1f6feb" stroke-width="1.5"/>'
        f'<circle cx="{x}" cy="{y}" r="2.2" fill="#1f6feb"/></svg>'
    )


def outcome_bars(runs: Sequence[dict[str, Any]], *, width: int = 1180, height: int = 170) -> Markup:
    """Rows by outcome per run (oldest first), stacked bars with a value axis."""
    if not runs:
        return Markup('<p class="empty">No runs yet.</p>')
    totals = [sum(int(r.get(k, 0)) for k, _ in OUTCOMES) for r in runs]
    top = max(totals) or 1
    left, bottom = 46, 18
    plot_w, plot_h = width - left - 4, height - bottom - 6
    slot = plot_w / len(runs)
    bar = max(2.0, min(28.0, slot * 0.7))
    parts = [
        f'<svg class="bars" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'role="img" aria-label="rows by outcome per run">',
        f'<line x1="{left}" y1="6" x2="{left}" y2="{6 + plot_h}" stroke="#d0d7de"/>',
        f'<line x1="{left}" y1="{6 + plot_h}" x2="{width - 4}" y2="{6 + plot_h}" '
        'stroke="#d0d7de"/>',
        f'<text x="{left - 6}" y="12" font-size="10" text-anchor="end" fill="#5d6b7c">'
        f"{_short(top)}</text>",
        f'<text x="{left - 6}" y="{6 + plot_h}" font-size="10" text-anchor="end" '
        'fill="#5d6b7c">0</text>',
    ]
    for i, run in enumerate(runs):
        x = left + i * slot + (slot - bar) / 2
        y = 6.0 + plot_h
        label = escape(f"{run.get('run_id', '')} {run.get('status', '')}")
        for key, colour in OUTCOMES:
            value = int(run.get(key, 0))
            if not value:
                continue
            h = value / top * plot_h
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{colour}"><title>{label}: {value:,} {key}</title></rect>'
            )
        if run.get("status") == "failed":
            parts.append(
                f'<circle cx="{x + bar / 2:.1f}" cy="{height - 7}" r="3" fill="#cf222e">'
                f"<title>{label}</title></circle>"
            )
    parts.append("</svg>")
    return Markup("".join(parts))


def _short(value: int) -> str:
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if value >= size:
            return f"{value / size:.1f}".rstrip("0").rstrip(".") + suffix
    return str(value)
