"""One application with API keys for the security tests: keys A and B, and an admin key.

Its bounds are set low (dead letters, body timeout) so that the tests reach them fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from ray import serve

from tests.integration.folder_apps import folder_shared
from tests.integration.gateway.conftest import GatewayApp, bearer, deploy, gateway_settings
from tests.integration.serve.conftest import delete_prefix

KEY_A, KEY_B, ADMIN = "sec-key-a", "sec-key-b", "sec-admin-key"
BODY_TIMEOUT_S = 2.0
DEAD_MAXLEN = 1000
DEAD_PAYLOAD_MAX_BYTES = 1024
# The default file limit: the Batch API tests send files of that size.
MAX_FILE_BYTES = 32 * 1024 * 1024


BACKLOG_MARK = "leaves_backlog"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{BACKLOG_MARK}: leaves its app minutes of background work (a queue to read "
        "through); runs after the other tests of tests/integration/security",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """This folder's tests marked ``leaves_backlog`` run after its others, so that none
    of those waits behind the backlog; the app goes when the run leaves the folder."""
    here = Path(__file__).parent
    ours = [i for i, item in enumerate(items) if item.path.parent == here]
    if not ours:
        return
    mine = [items[i] for i in ours]
    ordered = [item for item in mine if not item.get_closest_marker(BACKLOG_MARK)]
    ordered += [item for item in mine if item.get_closest_marker(BACKLOG_MARK)]
    for index, item in zip(ours, ordered, strict=True):
        items[index] = item


@pytest.fixture(scope="module")
def secure_app(request: pytest.FixtureRequest, ray_serve: str, redis_url: str) -> GatewayApp:
    """The application, its requests sent with key A unless told otherwise; one for this
    folder."""
    return folder_shared(request, lambda: open_secure_app(ray_serve, redis_url))


@contextmanager
def open_secure_app(base_url: str, redis_url: str) -> Iterator[GatewayApp]:
    settings = gateway_settings(
        redis_url,
        "sec",
        api_keys=f"{KEY_A},{KEY_B}",
        admin_api_keys=ADMIN,
        http_body_timeout_s=BODY_TIMEOUT_S,
        dead_maxlen=DEAD_MAXLEN,
        dead_payload_max_bytes=DEAD_PAYLOAD_MAX_BYTES,
        max_file_bytes=MAX_FILE_BYTES,
    )
    app = deploy(settings, base_url, headers=bearer(KEY_A))
    yield app
    serve.delete(settings.app_name)
    delete_prefix(redis_url, settings.prefix)
