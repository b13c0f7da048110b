"""Shared Plotly helpers: figures are built here and rendered by static/js/charts.js.

Views pass `chart_json(fig)` to the template's `core/_chart.html`, which drops it into the
page with json_script (no inline script, nothing fetched from a CDN).
"""
import plotly.graph_objects as go

# A categorical palette (after Okabe and Ito's): neighbours differ in hue and lightness, so up
# to five runs of a comparison, or the series of any chart, stay apart, also for the colour-blind.
PALETTE = ["#2f5d8a", "#e69f00", "#009e73", "#cc3d3d", "#8a63b8", "#56b4e9"]

LAYOUT = dict(
    # automargin on the title and the axes: long tick labels and titles push the plot inward
    # instead of being clipped at a narrow card's edge.
    margin=dict(l=48, r=16, t=72, b=48),
    paper_bgcolor="rgba(0,0,0,0)",
    plot_bgcolor="rgba(0,0,0,0)",
    font=dict(family="system-ui, sans-serif", size=12, color="#1f2430"),
    colorway=PALETTE,
    # Flat keys: callers pass their own title=… next to **LAYOUT.
    title_x=0, title_xanchor="left", title_y=1, title_yanchor="top", title_yref="container",
    title_pad_t=8, title_automargin=True,
    # Above the plot, below the title: a legend under the plot collides with the x-axis tick
    # labels as soon as they are long or rotated.
    legend=dict(orientation="h", x=0, xanchor="left", y=1.02, yanchor="bottom"),
    xaxis_automargin=True,
    yaxis_automargin=True,
)
WAITING = "waiting for the first step"


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


def waiting(fig, message=WAITING):
    """An empty chart as a note instead of bare axes (Plotly draws −1 to 6 for no data).
    `meta.waiting` tells static/js/runs.js to bring the axes back with the first points."""
    fig.update_layout(meta={"waiting": True},
                      annotations=[dict(text=plain(message), showarrow=False, xref="paper", yref="paper",
                                        x=0.5, y=0.5, font=dict(size=14, color="#6b7280"))])
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def grouped_bars(categories, series, *, title="", height=320):
    """One bar per category for each named series: `series` is {name: [values…]}."""
    x = [plain(category) for category in categories]
    fig = go.Figure([go.Bar(name=plain(name), x=x, y=list(values)) for name, values in series.items()])
    fig.update_layout(barmode="group", title=plain(title), height=height, **LAYOUT)
    return chart_json(fig)

