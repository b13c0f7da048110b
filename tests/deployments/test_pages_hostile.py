"""The core hostile-input walk (tests/core/test_hostile_input.py) over the deployment routes,
with a real deployment behind them, so that odd values reach the forms, the model methods and
the prediction-log queries instead of a 404. Nothing may answer 500."""
import types
import uuid

import pytest
from django.db import transaction

from lifecycle.deployments.models import Feedback, ServingToken
from tests.conftest import make_user
from tests.core.test_hostile_input import (
    ROUTES, Walker, concrete, reads, send_bodies, send_fields, send_json, send_paths,
)
from tests.deployments.factories import make_deployment
from tests.deployments.page_helpers import log_row, write

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("store_with_output")]

DEPLOYMENT_ROUTES = [(route, name, pattern) for route, name, pattern in ROUTES if name.startswith("deployments:")]


@pytest.fixture
def seeded(trained, people, tmp_path):
    deployment = make_deployment(trained, people, tmp_path, mode="canary", share=10)
    request_id = uuid.uuid4()
    write([log_row(deployment, request_id=request_id), log_row(deployment, route="shadow", request_id=request_id),
           log_row(deployment, route="canary")])
    Feedback.give(request_id=request_id, label="refund_request", user=people["erin"])
    token, _ = ServingToken.issue(people["erin"], "walk", [deployment])
    values = {"name": deployment.name, "number": deployment.current_release.number, "token_id": token.pk,
              "rollback_id": 1}
    bases = {
        "deployments:release_share": {"share": "20"}, "deployments:release_promote": {"reason": "walk"},
        "deployments:release_rollback": {"reason": "walk"},
        "deployments:review_give": {"request_id": str(request_id), "position": "0", "label": "complaint"},
        "deployments:tokens": {"name": "t", "deployments": deployment.name, "rate_per_second": "1", "burst": "1"},
        "deployments:create": {"name": "walked", "environment": "e", "model": deployment.model.slug,
                               "stable": str(deployment.current_release.stable_id)},
        "deployments:release_start": {"candidate": str(deployment.current_release.candidate_id), "mode": "canary",
                                      "share": "5"},
        "deployments:api_rollback_create": {"reason": "walk"},
    }
    return types.SimpleNamespace(admin=make_user("ada-admin", superuser=True), values=values, bases=bases,
                                 form_kwargs={"deployment": deployment})


def test_no_deployment_route_answers_500_to_hostile_input(client, seeded, redis):
    """One seeded deployment for every route (seeding registers, promotes and deploys: the
    slow part); each route's walk is undone before the next, so each meets the same state."""
    client.force_login(seeded.admin)
    failures, sent = [], 0
    for route, name, pattern in DEPLOYMENT_ROUTES:
        walker, url, base = Walker(client), concrete(route, seeded.values), seeded.bases.get(name, {})
        with transaction.atomic():  # the walk's changes (a rollback, new releases) stay inside this route's walk
            methods = walker.methods(url, base)
            found = reads(pattern.callback)
            for method in methods:
                if method == "get" or not found.json:
                    send_fields(walker, method, url, base, found, seeded)
            if "post" in methods:
                if found.json:
                    send_json(walker, url, base, found)
                send_bodies(walker, url)
            send_paths(walker, route, methods, seeded)
            transaction.set_rollback(True)
        failures += [f"{name}: {failure}" for failure in walker.failures]
        sent += walker.sent
    assert DEPLOYMENT_ROUTES and not failures, f"{len(failures)} of {sent} requests failed:\n" + "\n".join(failures[:40])
