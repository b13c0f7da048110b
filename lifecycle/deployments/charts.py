"""Plotly figures of a deployment's last hour: request rate, latency percentiles and error
rate per route, minute by minute (from traffic.per_minute), and the shadow's latency beside
the live answers'.

Built on lifecycle.core.charts (LAYOUT, plain, chart_json), so they look like every other chart
and render through static/js/charts.js; static/js/deployments.js swaps in fresh figures from the
deployment's metrics API while the page is open.
"""
from datetime import timedelta

import plotly.graph_objects as go

from lifecycle.core.charts import LAYOUT, PALETTE, chart_json, grouped_bars, plain, waiting

ROUTE_COLOURS = {"stable": PALETTE[0], "canary": PALETTE[1], "shadow": PALETTE[4]}
PERCENTILE_DASH = {"p50": "solid", "p95": "dash", "p99": "dot"}
CHART_IDS = ("deployment-rate", "deployment-latency", "deployment-errors")
NO_TRAFFIC = "no requests in the last hour"


def _minutes(window):
    """Every minute of the window (its start), so an idle minute shows as zero, not as a line
    drawn across it."""
    count = int((window.until - window.since).total_seconds() // 60)
    return [window.since + timedelta(minutes=i) for i in range(count)]


def _by_minute(rows):
    return {row["minute"]: row for row in rows}


def _route_order(window):
    return sorted(window.routes, key=lambda route: list(ROUTE_COLOURS).index(route) if route in ROUTE_COLOURS else 9)


def _figure(title, y_title, window):
    fig = go.Figure()
    fig.update_layout(title=plain(title), height=300, **LAYOUT)
    fig.update_xaxes(type="date", title_text="UTC", range=[window.since.isoformat(), window.until.isoformat()])
    fig.update_yaxes(title_text=plain(y_title), rangemode="tozero")
    return fig


def _done(fig, window):
    if window.empty:
        waiting(fig, NO_TRAFFIC)
    return chart_json(fig)


def request_rate(window):
    minutes = _minutes(window)
    x = [m.isoformat() for m in minutes]
    fig = _figure("Requests per second", "requests/s", window)
    for route in _route_order(window):
        found = _by_minute(window.routes[route])
        y = [round(found[m]["requests"] / 60, 3) if m in found else 0 for m in minutes]
        fig.add_trace(go.Scatter(name=plain(route), x=x, y=y, mode="lines",
                                 line={"color": ROUTE_COLOURS.get(route, PALETTE[5])}))
    return _done(fig, window)


def latency(window):
    minutes = _minutes(window)
    x = [m.isoformat() for m in minutes]
    title = "Request latency p50, p95, p99" + (" (newest requests sampled)" if window.sampled else "")
    fig = _figure(title, "ms", window)
    for route in _route_order(window):
        found = _by_minute(window.routes[route])
        for name, dash in PERCENTILE_DASH.items():
            y = [found[m][name] if m in found else None for m in minutes]
            fig.add_trace(go.Scatter(name=plain(f"{route} {name}"), x=x, y=y, mode="lines+markers",
                                     line={"color": ROUTE_COLOURS.get(route, PALETTE[5]), "dash": dash},
                                     marker={"size": 4}, connectgaps=False))
    return _done(fig, window)


def error_rate(window):
    minutes = _minutes(window)
    x = [m.isoformat() for m in minutes]
    fig = _figure("Error rate", "% of requests", window)
    for route in _route_order(window):
        found = _by_minute(window.routes[route])
        y = [round(100 * found[m]["errors"] / found[m]["requests"], 3) if m in found and found[m]["requests"] else None
             for m in minutes]
        fig.add_trace(go.Scatter(name=plain(route), x=x, y=y, mode="lines+markers", marker={"size": 4},
                                 line={"color": ROUTE_COLOURS.get(route, PALETTE[5])}))
    return _done(fig, window)


def deployment_charts(window):
    """[(chart id, figure)] in the page's order."""
    return list(zip(CHART_IDS, (request_rate(window), latency(window), error_rate(window))))


def shadow_latency(summary):
    live, shadow = summary.latency.get("live", {}), summary.latency.get("shadow", {})
    return grouped_bars(["p50", "p95"], {"live": [live.get("p50"), live.get("p95")],
                                         "shadow": [shadow.get("p50"), shadow.get("p95")]},
                        title="Latency on the same inputs (ms)", height=280)
