import pytest

from tests.registry.conftest import artifacts, store_with_output  # noqa: F401  (the same fixtures)
from tests.conftest import make_user


@pytest.fixture
def people(groups):
    return {
        "erin": make_user("erin", "ml_engineer"),
        "ann": make_user("ann", "approver"),
        "abe": make_user("abe", "approver"),
        "ona": make_user("ona", "oncall"),
        "vic": make_user("vic", "viewer"),
        "lee": make_user("lee", "labeler"),
        "sam": make_user("sam"),  # no role: a stranger
    }
