"""Plotly figures for a run's page: training curves and evaluation reports.

Built on lifecycle.core.charts (its LAYOUT and chart_json), so runs look like every other
chart in the app and render through the same static/js/charts.js.
"""
import plotly.graph_objects as go

from lifecycle.core.charts import LAYOUT, PALETTE, chart_json, grouped_bars, plain, waiting

# Fewer points than this and a line alone hides where the measurements are (an eval every
# few hundred steps); more and the markers turn into noise.
MARKERS_BELOW = 30


def curves(series, *, title, y_title, height=320, log_y=False):
    """One line per named series: `series` is {name: (steps, values)}. Each series has its own
    palette colour in the figure itself (not left to the colorway), so that the n-th run of a
    comparison has the same colour in every chart."""
    fig = go.Figure()
    for i, (name, (steps, values)) in enumerate(series.items()):
        mode = "lines+markers" if len(steps) < MARKERS_BELOW else "lines"
        color = PALETTE[i % len(PALETTE)]
        fig.add_trace(go.Scatter(name=plain(name), x=list(steps), y=list(values), mode=mode,
                                 line={"color": color}, marker={"color": color}))
    fig.update_layout(title=plain(title), height=height, **LAYOUT)
    fig.update_xaxes(title_text="Step")
    fig.update_yaxes(title_text=plain(y_title), type="log" if log_y else "linear")
    if not any(steps for steps, _ in series.values()):
        waiting(fig)
    return chart_json(fig)


def confusion_heatmap(labels, matrix, *, title="Confusion matrix"):
    """Counts per (true, predicted) pair, true classes top to bottom in label order."""
    labels = [plain(str(label)) for label in labels]
    fig = go.Figure(
        go.Heatmap(
            x=labels,
            y=labels,
            z=[list(row) for row in matrix],
            text=[list(row) for row in matrix],
            texttemplate="%{text}",
            colorscale="Blues",
            hovertemplate="True %{y}<br>Predicted %{x}<br>%{z}<extra></extra>",
        )
    )
    # A square-ish figure that grows with the labels keeps the cells readable.
    height = min(720, max(320, 48 + 36 * len(labels) + 48))
    fig.update_layout(title=plain(title), height=height, **LAYOUT)
    # Category axes: labels like "0" and "1" would otherwise be read as numbers.
    fig.update_xaxes(title_text="Predicted", type="category")
    fig.update_yaxes(title_text="True", type="category", autorange="reversed")
    return chart_json(fig)


def reliability_diagram(bins, *, title="Reliability"):
    """Accuracy per confidence bin against the diagonal a perfectly calibrated model follows."""
    filled = [b for b in bins if b["count"]]
    fig = go.Figure(
        [
            go.Bar(
                name="Accuracy",
                x=[(b["lower"] + b["upper"]) / 2 for b in filled],
                y=[b["accuracy"] for b in filled],
                width=[b["upper"] - b["lower"] for b in filled],
                customdata=[[b["count"], b["confidence"]] for b in filled],
                hovertemplate="Accuracy %{y:.3f}<br>Confidence %{customdata[1]:.3f}"
                "<br>%{customdata[0]} examples<extra></extra>",
            ),
            go.Scatter(
                name="Perfect calibration",
                x=[0, 1],
                y=[0, 1],
                mode="lines",
                line={"dash": "dash", "color": "#8a8f98"},
                hoverinfo="skip",
            ),
        ]
    )
    fig.update_layout(title=plain(title), height=320, **LAYOUT)
    fig.update_xaxes(title_text="Confidence", range=[0, 1])
    fig.update_yaxes(title_text="Accuracy", range=[0, 1])
    return chart_json(fig)


def per_class_bars(per_class):
    """Precision, recall and F1 side by side for each label of a classification report."""
    labels = [str(row["label"]) for row in per_class]
    series = {
        "Precision": [row["precision"] for row in per_class],
        "Recall": [row["recall"] for row in per_class],
        "F1": [row["f1"] for row in per_class],
    }
    return grouped_bars(labels, series, title="Per-class scores")
