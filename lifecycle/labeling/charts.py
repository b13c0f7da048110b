"""The QC page's figures, built from a stored QCReport's data."""
import plotly.graph_objects as go

from lifecycle.core.charts import LAYOUT, chart_json, grouped_bars, plain


def _heatmap(x, y, z, *, title, hover, colorscale="Blues", zmin=None, zmax=None):
    x, y = [plain(v) for v in x], [plain(v) for v in y]
    text = [["" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v)) for v in row] for row in z]
    fig = go.Figure(go.Heatmap(x=x, y=y, z=z, text=text, texttemplate="%{text}", colorscale=colorscale,
                               zmin=zmin, zmax=zmax, hovertemplate=hover + "<extra></extra>"))
    # A square-ish figure that grows with its rows keeps the cells readable.
    fig.update_layout(title=plain(title), height=min(720, max(320, 96 + 36 * len(y))), **LAYOUT)
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category", autorange="reversed")
    return chart_json(fig)


def annotator_bars(annotators):
    names = [a["username"] for a in annotators]
    return grouped_bars(names, {"gold accuracy": [a["gold_accuracy"] for a in annotators],
                                "kappa with the others": [a["mean_kappa"] for a in annotators]},
                        title="Annotators: gold accuracy and agreement")


def answer_bars(annotators):
    names = [a["username"] for a in annotators]
    return grouped_bars(names, {"answers": [a["answers"] for a in annotators]}, title="Answers per annotator")


def kappa_heatmap(pairs, annotators):
    names = [a["username"] for a in annotators]
    index = {name: i for i, name in enumerate(names)}
    z = [[1.0 if i == j else None for j in range(len(names))] for i in range(len(names))]
    for pair in pairs:
        i, j = index.get(pair["a"]), index.get(pair["b"])
        if i is not None and j is not None:
            z[i][j] = z[j][i] = pair["kappa"]
    return _heatmap(names, names, z, title="Cohen's kappa for each pair", colorscale="RdBu", zmin=-1, zmax=1,
                    hover="%{y} and %{x}<br>kappa %{z:.3f}")


def confusion_heatmap(labels, confusion):
    """Row-normalised: when one annotator said the row's label, how often another said each label."""
    shares = []
    for row in confusion:
        total = sum(row)
        shares.append([round(v / total, 3) if total else None for v in row])
    return _heatmap(labels, labels, shares, title="Confusion between annotators", zmin=0, zmax=1,
                    hover="one said %{y}<br>another said %{x}<br>%{z:.1%}")


def qc_figures(project, data):
    annotators = data.get("annotators", [])
    return {
        "annotators": annotator_bars(annotators),
        "answers": answer_bars(annotators),
        "kappa": kappa_heatmap(data.get("pairs", []), annotators),
        "confusion": confusion_heatmap(project.label_set, data.get("confusion", [])),
    }
