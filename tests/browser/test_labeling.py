"""A labeler labels 20 examples with the keyboard only (one undo on the way); a reviewer then
sees the agreement numbers change and adjudicates the tie the labeler's answers made."""
import pytest
from playwright.sync_api import expect

from lifecycle.labeling import qc
from lifecycle.labeling.models import Assignment, Decision, Item
from tests.browser.conftest import log_in
from tests.conftest import make_user
from tests.labeling.factories import label_queue, labeled_version, make_project
from tests.workers import start_manage, stop

ANSWERS = 20
TIE_POSITION = 3


@pytest.fixture
def qc_worker(transactional_db, settings, tmp_path):
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    process = start_manage(tmp_path, "lifecycle_worker", "monitoring")
    yield process
    stop(process)


@pytest.fixture
def project(qc_worker, tmp_path):
    engineer = make_user("erin-engineer", "ml_engineer")
    version = labeled_version(tmp_path, engineer, n=60)
    project = make_project(version, engineer, overlap=2, gold_share=0, name="Ticket intents")
    other = make_user("kim-labeler", "labeler")

    # Kim has answered the first examples already: right, except one (a tie once Lee answers it).
    def kims_answer(assignment):
        truth = assignment.item.example.label
        if assignment.position == TIE_POSITION:
            return next(label for label in project.label_set if label != truth)
        return truth

    label_queue(project, other, kims_answer, limit=ANSWERS + 5)
    qc.compute(project)  # no example has two answers yet: alpha cannot be measured
    return project


def test_a_labeler_labels_twenty_with_the_keyboard_and_a_reviewer_adjudicates_the_tie(page, live_server, project, browser):
    labeler = make_user("lee-labeler", "labeler")
    truth = dict(Item.objects.filter(project=project).values_list("example__text", "example__label"))
    keys = {label: key for key, label in project.label_keys}

    log_in(page, live_server, labeler)
    page.click(".mainnav >> text=Labeling")
    page.click("text=Ticket intents")
    page.click("text=Start labeling")
    text = page.locator("#text")
    expect(text).not_to_have_text("Loading…")
    page.keyboard.press("?")
    expect(page.locator("#help")).to_be_visible()
    page.keyboard.press("?")
    expect(page.locator("#help")).to_be_hidden()

    done, undone = 0, False
    while done < ANSWERS:
        shown = text.inner_text()
        page.keyboard.press(keys[truth[shown]])
        done += 1
        expect(page.locator("#done")).to_have_text(str(done))
        expect(text).not_to_have_text(shown)
        if done == 5 and not undone:
            # u: the last answer is taken back and its example comes back on screen.
            page.keyboard.press("u")
            done -= 1
            undone = True
            expect(page.locator("#done")).to_have_text(str(done))
            expect(text).to_have_text(shown)
            expect(page.locator("#status")).to_contain_text("Undone")
    assert Assignment.objects.filter(annotator=labeler, state="answered").count() == ANSWERS
    tie = Item.objects.get(project=project, position=TIE_POSITION)
    assert tie.state == "tie"

    # The reviewer: QC before (computed when nobody overlapped), recompute, QC after.
    reviewer_page = browser.new_page()
    engineer = project.created_by
    log_in(reviewer_page, live_server, engineer)
    reviewer_page.goto(f"{live_server.url}/labeling/{project.pk}/qc")
    before = reviewer_page.locator("#qc-answers").inner_text()
    reviewer_page.click("#recompute")
    # No flash that would outlive the job: the page shows the job itself (tests/browser/test_job_status.py).
    expect(reviewer_page.locator(".messages")).to_have_count(0)
    # The page follows the QC job and reloads itself once it is done.
    expect(reviewer_page.locator("#qc-answers")).to_have_text(str(ANSWERS * 2 + 5), timeout=60_000)
    assert before != str(ANSWERS * 2 + 5)
    alpha = reviewer_page.locator("#qc-alpha").inner_text()
    assert alpha != "—" and 0 < float(alpha) < 1  # all agree but the tie
    expect(reviewer_page.locator("#pairs")).to_contain_text("kim-labeler · lee-labeler")

    reviewer_page.click("text=Ticket intents")
    reviewer_page.click("text=Adjudication queue")
    card = reviewer_page.locator(f"#item-{tie.pk}")
    expect(card).to_contain_text("kim-labeler")
    expect(card).to_contain_text("lee-labeler")
    correct = tie.example.label
    card.locator("input[name=note]").fill("Lee is right: see the order number")
    card.locator(f"button[value='{correct}']").click()
    expect(reviewer_page.locator(".messages")).to_contain_text(f"decided '{correct}'")
    expect(reviewer_page.locator("#queue-empty")).to_be_visible()
    decision = Decision.objects.get(item=tie)
    assert (decision.label, decision.reviewer, decision.note) == (correct, engineer, "Lee is right: see the order number")
    assert Item.objects.get(pk=tie.pk).state == "decided"


@pytest.fixture
def default_worker(transactional_db, settings, tmp_path):
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    process = start_manage(tmp_path, "lifecycle_worker", "default", "monitoring")
    yield process
    stop(process)


def test_an_engineer_creates_a_project_and_an_approver_overrides_qc_to_freeze_it(page, live_server, default_worker,
                                                                                   tmp_path, browser):
    engineer = make_user("erin-engineer", "ml_engineer")
    approver = make_user("alex-approver", "approver")
    version = labeled_version(tmp_path, engineer, n=30)
    log_in(page, live_server, engineer)
    page.click(".mainnav >> text=Labeling")
    page.click("text=New project")
    page.fill("input[name=name]", "Pilot review")
    page.select_option("select[name=version]", str(version.pk))
    page.fill("input[name=overlap]", "9")
    page.click("button:has-text('Create the project')")
    expect(page.locator(".error")).to_contain_text("less than or equal to 5")
    page.fill("input[name=overlap]", "2")
    page.click("button:has-text('Create the project')")
    expect(page.locator("h1")).to_contain_text("Pilot review")
    project = Item.objects.filter(project__name="Pilot review").first().project
    label_queue(project, make_user("kim-labeler", "labeler"), lambda a: a.item.example.label, limit=6)

    # QC is stale: the freeze is refused and QC recomputed; then refused with QC's reasons.
    page.click("button:has-text('Create version from labels')")
    expect(page.locator(".messages")).to_contain_text("QC is older than the latest answers")
    for _ in range(100):
        if project.qc_is_current(project.latest_qc()):
            break
        page.wait_for_timeout(200)
    page.click("button:has-text('Create version from labels')")
    expect(page.locator(".messages")).to_contain_text("no final label yet")

    approver_page = browser.new_page()
    log_in(approver_page, live_server, approver)
    approver_page.goto(f"{live_server.url}{project.get_absolute_url()}")
    approver_page.fill("textarea[name=override_reason]", "Pilot: the rest is relabeled next week.")
    approver_page.click("button:has-text('Create version from labels')")
    expect(approver_page.locator(".messages")).to_contain_text("being written")
    for _ in range(150):
        approver_page.reload()
        if approver_page.locator("#frozen-version").count():
            break
        approver_page.wait_for_timeout(200)
    expect(approver_page.locator("#override")).to_contain_text("alex-approver")
    approver_page.click("#frozen-version")
    expect(approver_page.locator("h1")).to_contain_text("v2")
