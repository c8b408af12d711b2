"""Plotly figures for the console, as plotly.js figure specs (data + layout); plotly.js draws them in the browser.

Specs are plain dicts rather than ``plotly.graph_objects`` figures: the board is redrawn every few seconds and
building validated figure objects costs more than the whole board (tens of ms each).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

Figure = dict[str, Any]
COLORS = {"ok": "#2a9d8f", "warn": "#e9c46a", "bad": "#e76f51", "info": "#457b9d"}


def _layout(title: str, **extra: Any) -> dict[str, Any]:
    return {
        "title": {"text": title, "font": {"size": 14}},
        "margin": {"l": 50, "r": 10, "t": 36, "b": 40},
        "height": 260,
        "paper_bgcolor": "rgba(0,0,0,0)",
        "plot_bgcolor": "rgba(0,0,0,0)",
        **extra,
    }


def bar(title: str, labels: list[str], values: list[float], *, color: str = COLORS["info"]) -> Figure:
    return {
        "data": [{"type": "bar", "x": labels, "y": values, "marker": {"color": color}, "text": values}],
        "layout": _layout(title),
    }


def time_bars(title: str, points: list[tuple[float, float]], *, color: str = COLORS["ok"], y: str = "") -> Figure:
    """Bars over time (epoch seconds on x), e.g. orders completed per minute."""
    xs = [datetime.fromtimestamp(t, tz=UTC).isoformat() for t, _ in points]
    return {
        "data": [{"type": "bar", "x": xs, "y": [v for _, v in points], "marker": {"color": color}}],
        "layout": _layout(title, xaxis={"type": "date"}, yaxis={"title": {"text": y}, "rangemode": "tozero"}),
    }


def series(title: str, xs: list[str], ys: list[float], *, y: str = "") -> Figure:
    return {
        "data": [{"type": "scatter", "mode": "lines+markers", "x": xs, "y": ys, "line": {"color": COLORS["info"]}}],
        "layout": _layout(title, yaxis={"title": {"text": y}, "rangemode": "tozero"}),
    }


def waterfall(rows: list[dict[str, Any]]) -> Figure:
    """A trace as horizontal bars: one per span, starting at its offset from the trace's start (ms)."""
    labels = [f"{i + 1:02d} {r['service']}: {r['operation']}" for i, r in enumerate(rows)]
    services = sorted({r["service"] for r in rows})
    palette = ["#264653", "#2a9d8f", "#e9c46a", "#f4a261", "#e76f51", "#457b9d", "#8d99ae", "#6d597a"]
    color = {s: palette[i % len(palette)] for i, s in enumerate(services)}
    return {
        "data": [
            {
                "type": "bar",
                "orientation": "h",
                "y": labels,
                "x": [max(r["duration_ms"], 0.05) for r in rows],
                "base": [r["start_ms"] for r in rows],
                "marker": {"color": [COLORS["bad"] if r["error"] else color[r["service"]] for r in rows]},
                "hovertemplate": "%{y}<br>start %{base:.1f} ms, %{x:.1f} ms<extra></extra>",
            }
        ],
        "layout": _layout(
            f"trace waterfall: {len(rows)} spans, {len(services)} services",
            height=max(220, 26 * len(rows) + 80),
            margin={"l": 320, "r": 10, "t": 36, "b": 40},
            xaxis={"title": {"text": "ms since the trace started"}},
            yaxis={"autorange": "reversed", "automargin": True},
        ),
    }
