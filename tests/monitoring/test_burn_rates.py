"""Burn-rate arithmetic on synthetic timelines of per-minute good/total counts (no database):
the SRE Workbook's multi-window, multi-burn-rate alerts for a 30-day SLO. A total outage pages
within the Workbook's detection time, a slow burn only tickets, a blip does not alert, and an
alert resets soon after recovery because of its short window."""
import math

import numpy as np
import pytest

from lifecycle.monitoring.models import default_burn_windows
from lifecycle.monitoring.slo import Timeline, budget, burn_rate, detect, replay

RATE = 1000  # requests a minute
DAYS3 = 3 * 1440
WINDOWS = default_burn_windows()


def steady(minutes, error_rate=0.0, rate=RATE):
    return [(rate - round(rate * error_rate), rate)] * minutes


def first(fired, severity, after=0):
    """The number of minutes after `after` at whose end `severity` first fires, or None."""
    for index in range(after, len(fired)):
        if severity in fired[index]:
            return index + 1 - after
    return None


def detection_minutes(window, target, error_rate):
    """The Workbook's detection time: the long window must hold factor x budget-per-window of
    errors, i.e. long x factor x (1 - target) / error rate."""
    return window["long_minutes"] * window["factor"] * (1 - target) / error_rate


def test_the_arithmetic():
    assert burn_rate(999, 1000, 0.999) == pytest.approx(1.0)  # spends the budget exactly over the window
    assert burn_rate(0, 1000, 0.999) == pytest.approx(1000.0)
    assert burn_rate(0, 0, 0.999) is None  # nothing to judge is not "no burn"
    assert budget(990, 1000, 0.99) == (pytest.approx(10.0), pytest.approx(0.0))
    assert budget(980, 1000, 0.99)[1] == pytest.approx(-1.0)  # exhausted: below 0, not clipped
    assert budget(0, 0, 0.99)[1] is None
    timeline = Timeline.of([(1, 2), (3, 4), (5, 6)])
    assert timeline.counts(3, 2) == (8, 10) and timeline.counts(3, 60) == (9, 12) and timeline.counts(1, 1) == (1, 2)


def test_a_total_outage_pages_within_the_workbook_detection_time():
    target = 0.999
    timeline = Timeline.of(steady(DAYS3) + steady(60, error_rate=1.0))
    fired = replay(timeline, WINDOWS, target)
    assert not any(fired[:DAYS3])  # three quiet days: nothing
    fast = WINDOWS[0]
    assert (fast["factor"], fast["long_minutes"], fast["short_minutes"]) == (14.4, 60, 5)
    bound = detection_minutes(fast, target, 1.0)
    assert bound == pytest.approx(0.864)  # 2 % of the 30-day budget: 52 s of a total outage
    detected = first(fired, "page", after=DAYS3)
    # Per-minute rollups see it at the end of the first bad minute: ceil(0.864) = 1 ...
    assert detected == math.ceil(bound) == 1
    assert detect(timeline, WINDOWS, target, DAYS3 + 1)[0]["firing"]
    # ... and with an evaluation every MONITORING_SLO_EVERY_SECONDS (60 s) the page goes out
    # within 2 minutes of the outage's start.
    assert detected + 60 / 60 <= 2


def test_a_slow_burn_only_tickets():
    target = 0.999
    rng = np.random.default_rng(7)
    errors = rng.binomial(RATE, 2 * (1 - target), size=DAYS3)  # 2x: the budget gone in 15 days
    fired = replay(Timeline.of([(RATE - e, RATE) for e in errors]), WINDOWS, target)
    assert not any("page" in f for f in fired)
    assert first(fired, "ticket") is not None
    assert sum("ticket" in f for f in fired) > 0.99 * DAYS3
    final = detect(Timeline.of([(RATE - e, RATE) for e in errors]), WINDOWS, target)
    assert [w["firing"] for w in final] == [False, False, False, True]  # only 1x over 3 d with 6 h
    assert final[3]["long_rate"] == pytest.approx(2.0, rel=0.05)


def test_a_blip_does_not_alert():
    # 100 % errors for two minutes on a 99 % SLO: 0.46 % of its budget, no page or ticket.
    fired = replay(Timeline.of(steady(600) + steady(2, error_rate=1.0) + steady(DAYS3)), WINDOWS, 0.99)
    assert not any(fired)
    # On a 99.9 % SLO a minute at 40 % errors (25 s of outage) is under every threshold too ...
    fired = replay(Timeline.of(steady(600) + steady(1, error_rate=0.4) + steady(DAYS3)), WINDOWS, 0.999)
    assert not any(fired)
    # ... while two full minutes there are 4.6 % of the month's budget: the 14.4x window pages,
    # as the Workbook intends (it alerts once 2 % of the budget went in an hour).
    fired = replay(Timeline.of(steady(600) + steady(2, error_rate=1.0) + steady(60)), WINDOWS, 0.999)
    assert first(fired, "page", after=600) == 1


def test_an_alert_resets_soon_after_recovery_thanks_to_the_short_window():
    target, outage = 0.999, 20
    timeline = Timeline.of(steady(DAYS3) + steady(outage, error_rate=1.0) + steady(600))
    fired = replay(timeline, WINDOWS, target)
    recovered = DAYS3 + outage
    assert "page" in fired[recovered - 1]
    cleared = next(i for i in range(recovered, len(fired)) if "page" not in fired[i]) + 1 - recovered
    assert cleared == 30  # the 6x window's 30-minute short window holds errors until then
    fast = next(i for i in range(recovered, len(fired))
                if not detect(timeline, WINDOWS, target, i + 1)[0]["firing"]) + 1 - recovered
    assert fast == 5  # the 14.4x window: its 5-minute short window
    # The long windows alone would keep paging for hours: 20 bad minutes over 6 h is still 9x.
    at_reset = detect(timeline, WINDOWS, target, recovered + cleared)
    assert at_reset[0]["long_rate"] > 14.4 and at_reset[1]["long_rate"] > 6.0
    assert not any(w["firing"] for w in at_reset[:2])
