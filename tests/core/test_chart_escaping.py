"""Every figure builder passes user text through charts.plain: no markup from a label, a name or a
username reaches the figure JSON (Plotly would draw it as a link or a restyled text)."""
import json

import pytest

from lifecycle.core.charts import grouped_bars, plain
from lifecycle.labeling import charts as qc_charts
from lifecycle.runs import charts as run_charts
from tests.conftest import make_user
from tests.labeling.factories import labeled_version

HOSTILE = '<a href="https://evil.example/phish">Click here to re-login</a>'
ESCAPED = '&lt;a href="https://evil.example/phish"&gt;Click here to re-login&lt;/a&gt;'
# Our own markup: Plotly hover and cell templates, never built from user text.
TEMPLATE_KEYS = {"hovertemplate", "texttemplate"}

BINS = [{"lower": 0.5, "upper": 1.0, "count": 4, "accuracy": 0.75, "confidence": 0.8}]
ANNOTATORS = [{"username": HOSTILE, "gold_accuracy": 0.9, "mean_kappa": 0.5, "answers": 12},
              {"username": "kim", "gold_accuracy": 0.8, "mean_kappa": 0.5, "answers": 10}]
BUILDERS = {
    "core.grouped_bars": lambda: grouped_bars([HOSTILE, "ok"], {HOSTILE: [1, 2]}, title=HOSTILE),
    "runs.curves": lambda: run_charts.curves({HOSTILE: ([0, 1], [1.0, 0.5])}, title=HOSTILE, y_title=HOSTILE),
    "runs.confusion_heatmap": lambda: run_charts.confusion_heatmap([HOSTILE, "ok"], [[1, 0], [0, 1]], title=HOSTILE),
    "runs.reliability_diagram": lambda: run_charts.reliability_diagram(BINS, title=HOSTILE),
    "runs.per_class_bars": lambda: run_charts.per_class_bars(
        [{"label": HOSTILE, "precision": 1.0, "recall": 0.5, "f1": 0.66}]),
    "labeling.annotator_bars": lambda: qc_charts.annotator_bars(ANNOTATORS),
    "labeling.answer_bars": lambda: qc_charts.answer_bars(ANNOTATORS),
    "labeling.kappa_heatmap": lambda: qc_charts.kappa_heatmap([{"a": HOSTILE, "b": "kim", "kappa": 0.4}], ANNOTATORS),
    "labeling.confusion_heatmap": lambda: qc_charts.confusion_heatmap([HOSTILE, "ok"], [[3, 1], [0, 2]]),
}


def texts(node, key=None):
    """(key, string) for every string in a figure, with the key it sits under."""
    if isinstance(node, dict):
        for k, value in node.items():
            yield from texts(value, k)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from texts(value, key)
    elif isinstance(node, str):
        yield key, node


def assert_plain(figure):
    found = list(texts(json.loads(json.dumps(figure))))
    raw = [(key, text) for key, text in found if "<" in text and key not in TEMPLATE_KEYS]
    assert raw == []
    assert any(ESCAPED in text for _, text in found)


def test_plain_escapes_what_plotly_reads_as_markup():
    assert plain('Q&A <b>bold</b> "x"') == 'Q&amp;A &lt;b&gt;bold&lt;/b&gt; "x"'
    assert plain("&lt;") == "&amp;lt;"  # shown as typed, not decoded into "<"
    assert plain(3) == 3 and plain(None) is None


@pytest.mark.parametrize("name", BUILDERS)
def test_no_builder_lets_markup_from_user_text_into_the_figure(name):
    assert_plain(BUILDERS[name]())


def page_figure(response, chart_id):
    assert response.status_code == 200
    html = response.content.decode()
    start = html.index(f'<script id="{chart_id}" type="application/json">') + len(f'<script id="{chart_id}" type="application/json">')
    return json.loads(html[start:html.index("</script>", start)])


def test_dataset_pages_chart_a_hostile_label_as_plain_text(db, client, tmp_path, settings):
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    engineer = make_user("erin-engineer", "ml_engineer")
    first = labeled_version(tmp_path, engineer, n=30, labels=[HOSTILE, "billing"], slug="hostile")
    second = labeled_version(tmp_path, engineer, n=31, labels=[HOSTILE, "billing"], slug="hostile")
    client.force_login(engineer)
    assert_plain(page_figure(client.get("/datasets/hostile/"), "label-chart"))
    assert_plain(page_figure(client.get(first.get_absolute_url()), "label-chart"))
    diff = client.get(f"/datasets/hostile/diff?a={first.number}&b={second.number}")
    assert_plain(page_figure(diff, "diff-chart"))
