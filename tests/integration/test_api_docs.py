"""The API's docs pages work with no internet: every script, style and font they load is served by ERDU."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from erdu_tasks.api.app import create_app
from erdu_tasks.settings import load_settings


@pytest.fixture()
def client(fresh_database_url, redis_server):
    settings = load_settings(database_url=fresh_database_url, redis_url=redis_server.url,
                             api_token="write-token-for-docs")
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_every_asset_from_erdu_itself(client, page):
    html = client.get(page)
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    assets = re.findall(r"""(?:src|href)\s*[=:]\s*['"]([^'"]+\.(?:js|css|png|ico|woff2?))['"]""", html.text)
    assert assets, html.text[:2000]
    remote = [a for a in assets if re.match(r"(?i)^(?:https?:)?//", a)]
    assert not remote, f"{page} loads from the internet: {remote}"
    for asset in assets:
        served = client.get(asset)
        assert served.status_code == 200 and served.content, asset
    spec = re.search(r"""['"](/openapi\.json)['"]""", html.text)
    assert spec and client.get(spec.group(1)).json()["info"]["title"] == "ERDU"
