import pytest

from tests.conftest import make_user


@pytest.fixture
def engineer(db):
    return make_user("erin", "ml_engineer")


@pytest.fixture
def eng_client(client, engineer):
    client.force_login(engineer)
    return client
