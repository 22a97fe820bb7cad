"""The front door: ``/`` links to the pages the caller's role may use, lists the stations with
their active models and shows the server's version (API per role, and the page in Chromium)."""

from __future__ import annotations

from importlib import metadata
from typing import Any

import pytest
from fastapi.testclient import TestClient

from serving import admin, home
from serving.app import create_app
from serving.settings import ServeSettings
from tests.serving.conftest import SINGLE, STATION, auth
from tests.serving.test_audit_page import browser, live  # noqa: F401  (fixtures)


@pytest.mark.parametrize(("role", "pages"), [
    ("auditor", ["/line", "/audit", "/docs"]),
    ("engineer", ["/line", "/label", "/docs"]),
    ("admin", ["/line", "/audit", "/label", "/docs"]),
    ("line", ["/docs"]),
    ("viewer", ["/line", "/docs"]),
])
def test_each_role_is_offered_exactly_its_pages(client: TestClient, keys: dict[str, str], role: str,
                                                pages: list[str]) -> None:
    body = client.get("/v1/home", headers=auth(keys, role)).json()
    assert [p["path"] for p in body["pages"]] == pages
    assert body["caller"] == {"name": f"{role}-key", "role": role}
    assert body["version"] == metadata.version("inspection")
    stations = {s["station"]: s for s in body["stations"]}
    assert set(stations) == {STATION, SINGLE}
    assert stations[SINGLE]["model"] == "tiny/v1" and stations[SINGLE]["cameras"] == ["cam"]
    # every page offered is one the role can open (its API admits the role)
    for page in body["pages"]:
        assert client.get(page["path"]).status_code == 200


def test_without_a_key_the_api_refuses_and_the_page_still_loads(client: TestClient) -> None:
    assert client.get("/v1/home").status_code == 401
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert page.headers["cache-control"] == "no-store"


def test_only_pages_the_app_serves_are_offered(settings: ServeSettings, keys: dict[str, str]) -> None:
    app = create_app(settings, routers=[admin.build_health_router, admin.build_ops_router, home.build_router])
    with TestClient(app) as client:
        body = client.get("/v1/home", headers=auth(keys, "admin")).json()
    assert [p["path"] for p in body["pages"]] == ["/docs"]


@pytest.mark.parametrize("viewport", [(1366, 768), (1920, 1080)])
def test_the_page_links_to_the_auditors_pages_and_lists_stations(live: str, keys: dict[str, str],  # noqa: F811
                                                                 browser: Any, viewport: tuple[int, int]) -> None:  # noqa: F811
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    page.goto(f"{live}/")
    expect(page.get_by_test_id("status")).to_contain_text("Paste your API key")
    page.fill("#api-key", keys["auditor"])
    page.click("#save-key")
    expect(page.get_by_test_id("who")).to_have_text("auditor-key (auditor)")
    links = page.get_by_test_id("pages").locator("a")
    expect(links).to_have_count(3)
    assert [links.nth(i).get_attribute("href") for i in range(3)] == ["/line", "/audit", "/docs"]
    expect(page.get_by_test_id("stations")).to_contain_text("tiny/v1")
    expect(page.get_by_test_id("version")).to_have_text(metadata.version("inspection"))
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    links.nth(1).click()
    page.wait_for_url(f"{live}/audit")
