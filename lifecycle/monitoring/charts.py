"""Plotly figures of the monitoring dashboards: quality over days, retrains and promotions and
compute per month, time-to-rollback over the quarter, the on-call latency and error-rate
series, and a version's input histograms now against its reference.

Built on lifecycle.core.charts (LAYOUT, plain, chart_json, waiting), with the deployment
pages' route colours and the run and registry pages' evaluation charts, so they look like
every other chart and render through static/js/charts.js.
"""
import plotly.graph_objects as go

from lifecycle.core.charts import LAYOUT, PALETTE, chart_json, grouped_bars, plain, waiting
from lifecycle.deployments.charts import PERCENTILE_DASH, ROUTE_COLOURS
from lifecycle.monitoring import dashboards, features
from lifecycle.runs import charts as run_charts

NO_ANSWERS = "no answers yet"


def _figure(title, y_title, height=300, **layout):
    fig = go.Figure()
    fig.update_layout(title=plain(title), height=height, **LAYOUT, **layout)
    fig.update_yaxes(title_text=plain(y_title))
    return fig


def _done(fig, empty, message=NO_ANSWERS):
    if empty:
        waiting(fig, message)
    return chart_json(fig)


# --- executive -------------------------------------------------------------------------------------


def quality_trend(trend):
    """Per deployment: feedback accuracy per day (solid, markers sized by nothing: a day
    without feedback is a gap) and the estimated accuracy (dashed)."""
    fig = _figure("Accuracy per day: feedback and estimated", "accuracy", height=320)
    for i, row in enumerate(trend):
        colour, name = PALETTE[i % len(PALETTE)], row["deployment"].name
        x = [p["day"].isoformat() for p in row["points"]]
        fig.add_trace(go.Scatter(name=plain(f"{name} feedback"), x=x, y=[p["feedback"] for p in row["points"]],
                                 mode="lines+markers", line={"color": colour}, connectgaps=False,
                                 customdata=[p["feedback_n"] for p in row["points"]],
                                 hovertemplate="%{x}: %{y:.3f} of %{customdata} answers<extra></extra>"))
        fig.add_trace(go.Scatter(name=plain(f"{name} estimated"), x=x, y=[p["estimated"] for p in row["points"]],
                                 mode="lines+markers", line={"color": colour, "dash": "dash"}, connectgaps=False))
    fig.update_xaxes(type="date", title_text="UTC day")
    fig.update_yaxes(range=[0, 1.02])
    empty = not any(p["feedback"] is not None or p["estimated"] is not None for r in trend for p in r["points"])
    return _done(fig, empty, "no feedback or estimate yet")


def retrains_and_promotions(months):
    """Runs started from a retrain draft and moves to production, side by side per month (a
    category axis: Plotly would read "2026-12" as a date and space the bars by days)."""
    fig = _figure("Retrains and promotions per month", "count", barmode="group")
    x = [m["month"].strftime("%Y-%m") for m in months]
    fig.add_trace(go.Bar(name="retrain runs", x=x, y=[m["retrains"] for m in months], marker={"color": PALETTE[0]}))
    fig.add_trace(go.Bar(name="promotions to production", x=x, y=[m["promotions"] for m in months],
                         marker={"color": PALETTE[1]}))
    fig.update_xaxes(type="category")
    return _done(fig, not any(m["retrains"] or m["promotions"] for m in months), "no retrain and no promotion in 12 months")


def compute_hours(months, any_jobs):
    fig = _figure("Training compute per month", "process-hours")
    fig.add_trace(go.Bar(name="training", x=[m["month"].strftime("%Y-%m") for m in months],
                         y=[round(m["hours"], 3) for m in months], marker={"color": PALETTE[0]}))
    fig.update_xaxes(type="category")
    return _done(fig, not any_jobs, "no training job finished in the last 12 months")


def rollback_times(rollbacks, median):
    """One point per rollback (its time from click to the last serving process), the
    quarter's median as a line."""
    fig = _figure("Time to rollback this quarter", "ms")
    x = [r.clicked_at.isoformat() for r in rollbacks]
    fig.add_trace(go.Scatter(name="rollback", x=x, y=[r.time_to_rollback_ms for r in rollbacks], mode="markers",
                             text=[plain(r.release.deployment.name) for r in rollbacks], marker={"color": PALETTE[3]},
                             hovertemplate="%{text}<br>%{x}<br>%{y:.0f} ms<extra></extra>"))
    if median is not None:
        fig.add_trace(go.Scatter(name=plain(f"median {median:.0f} ms"), x=[x[0], x[-1]], y=[median, median],
                                 mode="lines", line={"color": PALETTE[0], "dash": "dash"}))
    fig.update_xaxes(type="date", title_text="UTC")
    fig.update_yaxes(rangemode="tozero")
    return _done(fig, not rollbacks, "no rollback this quarter")


# --- on-call -------------------------------------------------------------------------------------


def _bucket_x(route_series):
    return [start.isoformat() for start, _ in route_series.buckets]


def latency_series(routes):
    """p50/p95/p99 per five-minute bucket for each live route (from the buckets' histograms)."""
    fig = _figure("Latency p50, p95, p99 (5-minute buckets)", "ms")
    for rs in routes:
        x = _bucket_x(rs)
        for name, q in dashboards.PERCENTILES.items():
            y = [dashboards.percentile(w.latency, q) for _, w in rs.buckets]
            fig.add_trace(go.Scatter(name=plain(f"{rs.route} {name}"), x=x, y=y, mode="lines+markers",
                                     marker={"size": 4}, connectgaps=False,
                                     line={"color": ROUTE_COLOURS.get(rs.route, PALETTE[5]), "dash": PERCENTILE_DASH[name]}))
    fig.update_xaxes(type="date", title_text="UTC")
    fig.update_yaxes(rangemode="tozero")
    return _done(fig, not any(w.requests for rs in routes for _, w in rs.buckets), "no answers in the last 6 hours")


def error_series(routes):
    fig = _figure("Error rate (5-minute buckets)", "% of answers")
    for rs in routes:
        y = [None if not w.requests else round(100 * w.errors / w.requests, 3) for _, w in rs.buckets]
        fig.add_trace(go.Scatter(name=plain(rs.route), x=_bucket_x(rs), y=y, mode="lines+markers", marker={"size": 4},
                                 connectgaps=False, line={"color": ROUTE_COLOURS.get(rs.route, PALETTE[5])}))
    fig.update_xaxes(type="date", title_text="UTC")
    fig.update_yaxes(rangemode="tozero")
    return _done(fig, not any(w.requests for rs in routes for _, w in rs.buckets), "no answers in the last 6 hours")


# --- debug --------------------------------------------------------------------------------------


def _bin_labels(edges):
    def number(x):
        return f"{x:g}"

    return ([f"< {number(edges[0])}"] + [f"{number(a)}–{number(b)}" for a, b in zip(edges, edges[1:])]
            + [f"≥ {number(edges[-1])}"])


def _shares(counts):
    total = sum(counts or [])
    return [100 * c / total for c in counts] if total else []


def _trimmed(labels, *histograms):
    """The bins from the first to the last that either histogram fills (a 65-bin axis of
    mostly empty bins says nothing)."""
    filled = [i for i in range(len(labels)) if any(h and h[i] for h in histograms)]
    if not filled:
        return labels, histograms
    lo, hi = filled[0], filled[-1] + 1
    return labels[lo:hi], [h[lo:hi] if h else h for h in histograms]


def histogram_vs_reference(title, edges, reference_counts, current_counts, current_name):
    """A feature's share of inputs per fixed bin: the reference's and the window's, overlaid."""
    labels, (ref, now) = _trimmed(_bin_labels(edges), _shares(reference_counts), _shares(current_counts))
    fig = _figure(title, "% of inputs", barmode="overlay")
    if ref:
        fig.add_trace(go.Bar(name="reference", x=labels, y=ref, marker={"color": PALETTE[0]}, opacity=0.55))
    if now:
        fig.add_trace(go.Bar(name=plain(current_name), x=labels, y=now, marker={"color": PALETTE[1]}, opacity=0.55))
    fig.update_xaxes(type="category", title_text="bin")
    return _done(fig, not ref and not now, "no reference and no answers yet")


def labels_vs_reference(reference_labels, current_labels, current_name):
    names = sorted(set(reference_labels or {}) | set(current_labels or {}))
    series = {}
    for name, counts in (("reference", reference_labels), (current_name, current_labels)):
        total = sum((counts or {}).values())
        if total:
            series[name] = [100 * counts.get(label, 0) / total for label in names]
    if not series:
        fig = _figure("Predicted labels", "% of answers")
        return _done(fig, True, "no reference and no answers yet")
    return grouped_bars(names, series, title="Predicted labels (% of answers)", height=300)


def confidence_vs_reference(reference_counts, current_counts, current_name):
    return histogram_vs_reference("Confidence", features.CONFIDENCE_EDGES, reference_counts, current_counts,
                                  current_name)


def run_curves(run, curve_charts):
    """The run page's curve charts (runs.views.CURVE_CHARTS) for the version's run: loss and
    the validation metrics, from its metric points (two queries)."""
    found = {"train": run.curves("train"), "eval": run.curves("eval")}
    shown = []
    for chart_id, title, y_title, traces in curve_charts:
        series = {name: found[kind].get(key, ([], [])) for name, kind, key in traces}
        if any(steps for steps, _ in series.values()):
            shown.append((f"debug-{chart_id}", run_charts.curves(series, title=title, y_title=y_title)))
    return shown
