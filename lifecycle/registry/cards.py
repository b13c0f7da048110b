"""Model cards: written from what is known at registration, edited by engineers as Markdown,
rendered with raw HTML off (markdown-it's CommonMark parser, `html=False`), so a card can
never carry a script, an event handler or a `javascript:` link onto a page."""
import re

from markdown_it import MarkdownIt
from django.utils.safestring import mark_safe

REQUIRED_SECTIONS = ("Intended use", "Training data", "Evaluation", "Limitations")
PLACEHOLDER = "_To be written by the model's owner._"
_HEADING = re.compile(r"^##\s+(.+?)\s*$", re.M)
SAFE_SCHEMES = ("http:", "https:", "mailto:")


def _markdown():
    # Tables on (the generated card's metrics are tables); raw HTML stays off.
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")
    md.validateLink = _safe_link
    md.add_render_rule("link_open", _link_open)
    md.core.ruler.push("lower_headings", _lower_headings)
    return md


def _lower_headings(state):
    """A card sits inside a page that has its own h1: its `#` becomes h2, `##` h3, and so on."""
    for token in state.tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(int(token.tag[1]) + 1, 6)}"


def _safe_link(url):
    """Relative links and http(s)/mailto only: no javascript:, data:, file: or vbscript:."""
    lowered = re.sub(r"[\x00-\x20]", "", url).lower()
    if ":" not in lowered.split("/", 1)[0]:
        return True
    return lowered.startswith(SAFE_SCHEMES)


def _link_open(self, tokens, idx, options, env):
    tokens[idx].attrSet("rel", "nofollow noopener noreferrer")
    return self.renderToken(tokens, idx, options, env)


_MD = _markdown()


def render(text):
    """The card as HTML, safe to put on a page."""
    return mark_safe(_MD.render(text or ""))


def sections(text):
    """{heading: body} of the card's level-2 sections."""
    parts = _HEADING.split(text or "")
    return {parts[i].strip(): parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}


def missing_sections(text):
    """Required sections that are absent, empty or still the placeholder."""
    found = sections(text)
    return [name for name in REQUIRED_SECTIONS if not found.get(name) or PLACEHOLDER in found[name]]


# --- the generated card ------------------------------------------------------------------------


def _pct(value):
    return f"{value:.3f}" if isinstance(value, (int, float)) else "not measured"


def _metrics(version):
    rows = [f"| {name} | {_pct(value)} |" for name, value in sorted(version.metrics.items())
            if isinstance(value, (int, float))]
    lines = ["| metric | test split |", "| --- | --- |", *rows] if rows else ["No test metrics were recorded."]
    per_class = version.evaluation.get("per_class") or []
    if per_class:
        lines += ["", "| class | precision | recall | F1 | support |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {c['label']} | {_pct(c['precision'])} | {_pct(c['recall'])} | {_pct(c['f1'])} | {c['support']} |"
                  for c in per_class]
    calibration = version.evaluation.get("calibration") or {}
    if calibration.get("ece") is not None:
        lines += ["", f"Expected calibration error (15 equal-width bins): {_pct(calibration['ece'])}."]
    return "\n".join(lines)


def _data(version):
    data = version.lineage["dataset_version"]
    line = (f"Dataset `{data['dataset']}` version {data['number']} ({data['rows']} rows, "
            f"manifest `{data['manifest_sha256'][:12]}`). PII: {data['pii_status']}. "
            f"Leakage between splits: {'found' if data['has_leakage'] else 'none found'}.")
    made = [m for v in [data, *version.lineage.get("ancestors", [])] for m in v.get("made_by", [])]
    for source in made:
        qc = source.get("qc") or {}
        line += f"\n\nLabels from the labeling project “{source['name']}” (QC {'passed' if qc.get('passes') else 'not passed'})."
    return line


def _limitations(version):
    warnings = version.run.warnings or []
    notes = [f"- {w.get('message', w) if isinstance(w, dict) else w}" for w in warnings]
    notes.append(f"- Trained and evaluated only on `{version.lineage['dataset_version']['dataset']}`; "
                 "inputs unlike it (language, domain, length) are outside what was measured.")
    return "\n".join(notes)


def generate(version):
    """A card from the version's run, data and evaluation. Intended use comes from the model's
    description; without one it is left for the owner to write (the card gate says so)."""
    run = version.run
    intended = version.model.description.strip() or PLACEHOLDER
    return f"""# {version.model.name} — version {version.number}

## Intended use

{intended}

Task: {version.task}. Labels: {', '.join(version.labels) or 'none'}.

## Model

Base model `{version.base_model_name}` (directory hash `{version.base_model_sha256[:12]}`), fine-tuned with
{run.method} by run {run.pk} (“{run.name}”, seed {run.seed}).

## Training data

{_data(version)}

## Evaluation

{_metrics(version)}

## Limitations

{_limitations(version)}
"""
