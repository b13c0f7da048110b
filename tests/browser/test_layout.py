"""No page of the front half is wider than the window, on a laptop (1280 px) or a phone
(390 px): rows of buttons wrap, wide tables scroll inside their own box, charts fit their card.

The pages hold real rows made by the factories, chosen to be wide: a label set of 12 long
labels (the adjudication buttons), an example with a long unbroken text, five runs side by
side, long file and run names, an audit payload of many keys."""
import pytest
from django.db import transaction
from playwright.sync_api import expect

from lifecycle.core.models import ApiToken, AuditEvent, Job
from lifecycle.datasets.models import Upload
from lifecycle.labeling import qc
from tests.browser.conftest import log_in
from tests.conftest import make_user
from tests.labeling.factories import label_queue, make_project
from tests.runs.factories import ingest_rows
from tests.runs.test_web import add_points, add_report, make_run

VIEWPORTS = [{"width": 1280, "height": 800}, {"width": 390, "height": 844}]
LABELS = ["account_access_problem", "billing_dispute_escalation", "cancel_subscription_request",
          "delivery_delay_complaint", "feature_request_general", "invoice_copy_request",
          "password_reset_help", "payment_method_update", "refund_status_question",
          "shipping_address_change", "technical_outage_report", "warranty_claim_submission"]
LONG_WORD = "https://example.com/orders/" + "0123456789abcdef" * 12
LONG_TEXT = ("The parcel was left at the wrong door and nobody answered the phone for three days. " * 6) + LONG_WORD


def rows(n, text_suffix=""):
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november".split()
    found = [{"text": f"message {i}{text_suffix}: {words[i % 14]} {words[(i * 7) % 14]} {words[(i * 3) % 14]} "
                      f"order {i * 7919 % 100000}", "label": LABELS[i % len(LABELS)], "customer_id": f"c{i}"}
             for i in range(n)]
    found[0]["text"] = LONG_TEXT + text_suffix
    return found


@pytest.fixture
def front_half(transactional_db, settings, tmp_path):
    """Every kind of row the front half shows, a few of each."""
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    admin = make_user("ada-admin", superuser=True)
    labeler = make_user("lee-labeler", "labeler")
    other = make_user("kim-labeler", "labeler")
    old = ingest_rows(tmp_path, admin, rows(72), slug="support-tickets")
    new = ingest_rows(tmp_path, admin, rows(84, " again"), slug="support-tickets")
    Upload.objects.create(dataset=new.dataset, source_sha256="0" * 64, filename="export-" + "x" * 120 + ".jsonl",
                          size=12345, format="jsonl", columns=["text", "label", "customer_id"],
                          mapping={"text": "text", "label": "label"}, version=new, created_by=admin)

    project = make_project(new, admin, overlap=2, gold_share=0, name="Support tickets, second pass",
                           label_set=LABELS)
    # Kim says the version's label, Lee the next one: every example both answered is a tie.
    label_queue(project, other, lambda a: a.item.example.label, limit=12)
    label_queue(project, labeler, lambda a: LABELS[(LABELS.index(a.item.example.label) + 1) % len(LABELS)], limit=12)
    qc.compute(project)

    runs = []
    for i in range(5):
        run = make_run(new, user=admin, status=Job.Status.SUCCEEDED, name=f"LoRA all-MiniLM-L6-v2 on support-tickets, try {i}",
                       learning_rate=1e-3 * (i + 1), target_modules=["query", "key", "value", "dense"],
                       test_metrics={"accuracy": 0.8 + i / 100, "macro_f1": 0.7})
        add_points(run, "train", list(range(1, 31)), loss=[1 / s for s in range(1, 31)], lr=[1e-3] * 30)
        add_points(run, "eval", [10, 20, 30], eval_loss=[0.5, 0.4, 0.3], accuracy=[0.6, 0.7, 0.8], macro_f1=[0.5, 0.6, 0.7])
        add_report(run)
        runs.append(run)
    with transaction.atomic():
        AuditEvent.record(admin, "test.wide_payload", runs[0], {f"setting_{k}": LONG_WORD for k in range(20)})
    ApiToken.issue(admin, "a token with a long name for the nightly export of every support ticket")

    slug = new.dataset.slug
    compare = ",".join(str(run.pk) for run in runs)
    admin_pages = [
        "/", "/datasets/", "/datasets/new", f"/datasets/{slug}/", f"/datasets/{slug}/v{old.number}/",
        f"/datasets/{slug}/v{new.number}/", f"/datasets/{slug}/upload", f"/datasets/uploads/{Upload.objects.get().pk}/",
        f"/datasets/{slug}/diff?a={old.number}&b={new.number}",
        "/labeling/", "/labeling/new", f"/labeling/{project.pk}/", f"/labeling/{project.pk}/review",
        f"/labeling/{project.pk}/table", f"/labeling/{project.pk}/qc", f"/labeling/{project.pk}/adjudication",
        "/runs/", "/runs/new", f"/runs/{runs[0].pk}/", f"/runs/{runs[0].pk}/debug", f"/runs/compare?runs={compare}",
        "/jobs/", f"/jobs/{runs[0].job_id}", "/audit/", "/account/tokens/",
    ]
    labeler_pages = ["/", "/labeling/", f"/labeling/{project.pk}/", f"/labeling/{project.pk}/review", "/jobs/",
                     "/account/tokens/"]
    return {"admin": (admin, admin_pages), "labeler": (labeler, labeler_pages), "project": project}


def overflow(page):
    """How far the page is wider than its viewport (0 or less: it fits)."""
    return page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")


# The innermost elements that stick out past the window's right edge, to name in a failure.
STICKING_OUT = """() => [...document.querySelectorAll("body *")]
  .filter(el => el.getBoundingClientRect().right > window.innerWidth + 1
          && ![...el.children].some(c => c.getBoundingClientRect().right > window.innerWidth + 1))
  .filter(el => !el.closest(".table-scroll, table.data, .js-plotly-plot"))
  .slice(0, 3).map(el => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") + "." + el.className)"""


@pytest.mark.parametrize("who", ["admin", "labeler"])
def test_no_page_is_wider_than_its_viewport(browser, live_server, front_half, who):
    user, paths = front_half[who]
    too_wide = {}
    for viewport in VIEWPORTS:
        page = browser.new_page(viewport=viewport)
        log_in(page, live_server, user)
        for path in paths:
            response = page.goto(f"{live_server.url}{path}")
            assert response.status == 200, (path, response.status)
            page.wait_for_load_state("networkidle")
            if page.locator("[data-chart]").count():
                expect(page.locator("[data-chart] .main-svg").first).to_be_attached()
            excess = overflow(page)
            if excess > 1:
                too_wide[(viewport["width"], path)] = (excess, page.evaluate(STICKING_OUT))
        page.close()
    assert not too_wide, f"pages wider than the window (px too wide, what sticks out): {too_wide}"


def test_the_adjudication_buttons_wrap_and_the_audit_payload_folds(browser, live_server, front_half):
    admin, _ = front_half["admin"]
    project = front_half["project"]
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    log_in(page, live_server, admin)
    page.goto(f"{live_server.url}/labeling/{project.pk}/adjudication")
    buttons = page.locator("section.adjudicate").first.locator("button[name=label]")
    expect(buttons).to_have_count(len(LABELS))
    tops = {round(box["y"]) for box in (buttons.nth(i).bounding_box() for i in range(len(LABELS)))}
    assert len(tops) > 1  # more than one row of buttons

    page.goto(f"{live_server.url}/audit/?action=test.wide_payload")
    payload = page.locator("td.payload details").first
    folded = payload.bounding_box()["height"]
    assert folded < 40  # one line
    expect(payload.locator("pre")).to_be_hidden()
    payload.locator("summary").click()
    expect(payload.locator("pre")).to_be_visible()
    expect(payload.locator("pre")).to_contain_text('"setting_19"')
    assert payload.bounding_box()["height"] > folded
