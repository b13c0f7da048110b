"""Plotly figures for the registry's pages: metrics across a model's versions, a candidate's
evidence beside the production version's, and which version held which stage when.

Built on lifecycle.core.charts (LAYOUT, plain, chart_json) and the run page's evaluation charts,
so they look like every other chart and render through static/js/charts.js.
"""
import plotly.graph_objects as go

from lifecycle.core.charts import LAYOUT, PALETTE, chart_json, grouped_bars, plain, waiting
from lifecycle.runs import charts as run_charts

# Charted across versions when measured, in this order.
HISTORY_METRICS = ("accuracy", "macro_f1", "ece", "perplexity", "exact_match")
# A stage's bar colour in the timeline.
STAGE_COLOURS = {"production": PALETTE[2], "staging": PALETTE[1]}


def metric_history(versions, metrics=HISTORY_METRICS):
    """One line per metric over `versions` (oldest first), on a category axis of version numbers."""
    x = [f"v{version.number}" for version in versions]
    fig = go.Figure()
    for i, name in enumerate(m for m in metrics if any(_number(v.metrics.get(m)) for v in versions)):
        colour = PALETTE[i % len(PALETTE)]
        fig.add_trace(go.Scatter(name=plain(name), x=x, y=[_value(v.metrics.get(name)) for v in versions],
                                 mode="lines+markers", line={"color": colour}, marker={"color": colour}))
    fig.update_layout(title="Test metrics by version", height=320, **LAYOUT)
    fig.update_xaxes(title_text="Version", type="category")
    fig.update_yaxes(title_text="score")
    if not fig.data:
        waiting(fig, "no test metrics were recorded")
    return chart_json(fig)


def metric_comparison(rows, candidate, production):
    """Candidate and production side by side for each metric row (views' _metric_rows)."""
    rows = [row for row in rows if row["candidate"] is not None or row["production"] is not None]
    series = {f"candidate v{candidate.number}": [row["candidate"] for row in rows]}
    if production is not None:
        series[f"production v{production.number}"] = [row["production"] for row in rows]
    return grouped_bars([row["name"] for row in rows], series, title="Test metrics")


def per_class_f1(candidate, production):
    """F1 per label, candidate beside production, over the labels either has."""
    mine = {str(c["label"]): c.get("f1") for c in candidate.evaluation.get("per_class") or []}
    theirs = {str(c["label"]): c.get("f1") for c in (production.evaluation.get("per_class") or [] if production else [])}
    labels = list(mine) + [label for label in theirs if label not in mine]
    series = {f"candidate v{candidate.number}": [mine.get(label) for label in labels]}
    if production is not None:
        series[f"production v{production.number}"] = [theirs.get(label) for label in labels]
    return grouped_bars(labels, series, title="F1 per class")


def confusion(version, role):
    found = version.evaluation.get("confusion") or {}
    if not found.get("labels"):
        return None
    return run_charts.confusion_heatmap(found["labels"], found["matrix"], title=f"Confusion matrix, {role} v{version.number}")


def reliability(version, role):
    bins = (version.evaluation.get("calibration") or {}).get("bins")
    if not bins:
        return None
    return run_charts.reliability_diagram(bins, title=f"Reliability, {role} v{version.number}")


def stage_timeline(changes, now):
    """Which version held production and staging when: one bar per holding, from the moves
    (`changes` oldest first). A holding still going runs to `now`."""
    held, bars = {}, []  # held: (version id, stage) -> since when
    for change in changes:
        start = held.pop((change.version_id, change.from_stage), None)
        if start is not None:
            bars.append((change.from_stage, change.version.number, start, change.changed_at))
        if change.to_stage in STAGE_COLOURS:
            held[(change.version_id, change.to_stage)] = change.changed_at
    numbers = {change.version_id: change.version.number for change in changes}
    bars += [(stage, numbers[version_id], start, now) for (version_id, stage), start in held.items()]
    fig = go.Figure()
    for stage, colour in STAGE_COLOURS.items():
        mine = [b for b in bars if b[0] == stage]
        if not mine:
            continue
        fig.add_trace(go.Bar(
            name=stage, orientation="h", y=[stage] * len(mine), base=[b[2].isoformat() for b in mine],
            x=[max(1.0, (b[3] - b[2]).total_seconds() * 1000) for b in mine], text=[f"v{b[1]}" for b in mine],
            textposition="inside", insidetextanchor="middle", marker={"color": colour},
            customdata=[[f"v{b[1]}", f"{b[2]:%Y-%m-%d %H:%M}", f"{b[3]:%Y-%m-%d %H:%M}"] for b in mine],
            hovertemplate="%{customdata[0]} in " + stage + "<br>%{customdata[1]} → %{customdata[2]} UTC<extra></extra>"))
    fig.update_layout(title="Stages over time", height=240, barmode="overlay", showlegend=False, **LAYOUT)
    fig.update_xaxes(type="date", title_text="UTC")
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=["staging", "production"])
    if not bars:
        waiting(fig, "no version has held production or staging yet")
    return chart_json(fig)


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _value(value):
    return value if _number(value) else None
