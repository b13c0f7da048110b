from tests.deployments.conftest import people  # noqa: F401  (the same named users)
from tests.registry.conftest import artifacts, store_with_output  # noqa: F401  (the same fixtures)
