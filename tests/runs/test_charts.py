"""lifecycle/runs/charts.py: each builder returns a figure dict the page can serialise."""
import json

from lifecycle.runs.charts import (
    confusion_heatmap,
    curves,
    per_class_bars,
    reliability_diagram,
)
from lifecycle.runs.metrics import classification_report


def report():
    return classification_report([0, 1, 2, 2, 1], [0, 2, 2, 1, 1], [[0.7, 0.2, 0.1]] * 5, ["cat", "dog", "eel"])


def serialises(chart):
    assert set(chart) >= {"data", "layout"}
    json.dumps(chart)
    return chart


def test_curves_one_line_per_series_with_markers_only_when_sparse():
    chart = serialises(
        curves(
            {"train": (list(range(100)), [1 / (s + 1) for s in range(100)]), "eval": ([0, 50, 99], [1.0, 0.1, 0.05])},
            title="Loss",
            y_title="loss",
            log_y=True,
        )
    )
    train, evaluation = chart["data"]
    assert (train["name"], train["mode"]) == ("train", "lines")
    assert (evaluation["name"], evaluation["mode"]) == ("eval", "lines+markers")
    assert list(evaluation["y"]) == [1.0, 0.1, 0.05]
    assert chart["layout"]["yaxis"]["type"] == "log"


def test_confusion_heatmap_cells_are_the_matrix():
    confusion = report()["confusion"]
    chart = serialises(confusion_heatmap(confusion["labels"], confusion["matrix"]))
    (heatmap,) = chart["data"]
    assert heatmap["type"] == "heatmap"
    assert [list(row) for row in heatmap["z"]] == confusion["matrix"] == [[1, 0, 0], [0, 1, 1], [0, 1, 1]]
    assert list(heatmap["y"]) == ["cat", "dog", "eel"]
    assert chart["layout"]["yaxis"]["autorange"] == "reversed"


def test_reliability_diagram_skips_empty_bins_and_draws_the_diagonal():
    bins = report()["calibration"]["bins"]
    chart = serialises(reliability_diagram(bins))
    bars, diagonal = chart["data"]
    assert len(bars["x"]) == sum(1 for b in bins if b["count"]) == 1
    assert list(bars["y"]) == [0.6]
    assert (list(diagonal["x"]), list(diagonal["y"]), diagonal["line"]["dash"]) == ([0, 1], [0, 1], "dash")
    assert list(chart["layout"]["xaxis"]["range"]) == [0, 1]


def test_per_class_bars_groups_precision_recall_f1():
    per_class = report()["per_class"]
    chart = serialises(per_class_bars(per_class))
    assert [trace["name"] for trace in chart["data"]] == ["Precision", "Recall", "F1"]
    assert list(chart["data"][0]["x"]) == ["cat", "dog", "eel"]
    assert list(chart["data"][2]["y"]) == [row["f1"] for row in per_class]


def test_curves_without_a_point_wait_instead_of_drawing_empty_axes():
    empty = serialises(curves({"training loss": ([], []), "validation loss": ([], [])}, title="Loss", y_title="loss"))
    layout = empty["layout"]
    assert layout["meta"] == {"waiting": True}
    assert layout["xaxis"]["visible"] is False and layout["yaxis"]["visible"] is False
    assert [a["text"] for a in layout["annotations"]] == ["waiting for the first step"]
    drawn = serialises(curves({"training loss": ([1], [0.9]), "validation loss": ([], [])}, title="Loss", y_title="loss"))
    assert "meta" not in drawn["layout"] and "annotations" not in drawn["layout"]
    assert drawn["layout"]["xaxis"].get("visible", True) is True


def test_curves_give_up_to_five_series_five_distinct_colours_in_order():
    series = {f"run {i}": ([1, 2], [1.0, 0.5]) for i in range(5)}
    first = [t["line"]["color"] for t in curves(series, title="Loss", y_title="loss")["data"]]
    again = [t["line"]["color"] for t in curves(series, title="Validation loss", y_title="loss")["data"]]
    assert len(set(first)) == 5 and first == again
