"""Shared Plotly helpers: figures are built here and rendered by static/js/charts.js.

Views pass `chart_json(fig)` to the template's `core/_chart.html`, which drops it into the
page with json_script (no inline script, nothing fetched from a CDN).
"""
import plotly.graph_objects as go

LAYOUT = dict(
    margin=dict(l=48, r=16, t=36, b=48),
    paper_bgcolor="rgba(0,0,0,0)",
    plot_bgcolor="rgba(0,0,0,0)",
    font=dict(family="system-ui, sans-serif", size=12, color="#1f2430"),
    colorway=["#2f5d8a", "#7aa6c2", "#c98b2b", "#6b9e6b", "#a45a52", "#8a7fb0"],
    legend=dict(orientation="h", y=-0.2),
)


def plain(value):
    """A string as literal chart text; other values (numbers, None) pass through.

    Plotly reads every text it draws (ticks, legends, hover boxes, titles) as a small HTML
    subset, so a label `<a href=…>` would become a link and `<span style=…>` restyle the chart.
    It decodes entities when it draws, so the escaped string shows exactly as typed. Each
    builder passes every text argument through here; hover and text templates stay markup.
    """
    if not isinstance(value, str):
        return value
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def chart_json(fig):
    return fig.to_plotly_json()


def grouped_bars(categories, series, *, title="", height=320):
    """One bar per category for each named series: `series` is {name: [values…]}."""
    x = [plain(category) for category in categories]
    fig = go.Figure([go.Bar(name=plain(name), x=x, y=list(values)) for name, values in series.items()])
    fig.update_layout(barmode="group", title=plain(title), height=height, **LAYOUT)
    return chart_json(fig)

