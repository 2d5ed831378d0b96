"""The web console in a real browser (Debian's Chromium, headless, driven by Playwright)
against a real daemon: sign-in, configuration, flags, secrets, services, audit, live
updates, refusals, and user data always shown as text.

`FPCD_CONSOLE_SCREENSHOTS=<dir>` saves screenshots of the main pages there (docs/console/).
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect, sync_playwright

from fpcd.app import Daemon
from tests.clocks import MovableClock
from tests.conftest import DaemonProcess, issue_token, make_settings, secret_value

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Root in CI containers: Chromium's sandbox needs user namespaces it may not get there.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
XSS = "<img src=x onerror=alert(1)>"
SHOTS = os.environ.get("FPCD_CONSOLE_SCREENSHOTS")


# -- a daemon, tokens and plain API calls --------------------------------------------------


class Api:
    """Blocking JSON calls to a daemon process (what the CLI or another host would do)."""

    def __init__(self, proc: DaemonProcess) -> None:
        self.proc = proc
        self.url = proc.url
        self.key = base64.b64decode((proc.data_dir / "auth.key").read_text().strip())

    def token(self, role: str, **claims: Any) -> str:
        """A token signed with the daemon's own secret, as `fpcd token create` makes."""
        claims = {"sub": claims.pop("subject", f"console-{role}"), "roles": [role], **claims}
        return jwt.encode({**claims, "iat": int(time.time())}, self.key, algorithm="HS256")

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {token or self.proc.token}")
        request.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                text = response.read().decode()
                status = response.status
        except urllib.error.HTTPError as error:
            text, status = error.read().decode(), error.code
        return status, json.loads(text) if text else None

    def ok(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        status, doc = self.call(method, path, body, **kwargs)
        assert status < 400, (method, path, status, doc)
        return doc


def seed(api: Api, health_url: str | None = None) -> None:
    """What an operator's fleet looks like: services, layers, a schema, flags, a secret,
    registrations and some evaluations."""
    api.ok(
        "PUT",
        "/api/config/checkout",
        {
            "environment": "default",
            "config": {
                "db": {"host": "localhost", "port": 5432, "pool": 10},
                "retries": 3,
                "features": {"currency": "EUR", "oneClick": False},
            },
        },
    )
    api.ok(
        "PUT",
        "/api/config/checkout",
        {
            "environment": "production",
            "config": {"db": {"host": "db.prod.internal", "pool": 40}},
            "description": "prod database",
            "tags": ["db"],
        },
    )
    api.ok(
        "PUT",
        "/api/config/checkout",
        {
            "environment": "production",
            "config": {"db": {"host": "db.prod.internal", "pool": 60}, "retries": 5},
            "description": "more connections",
        },
    )
    api.ok(
        "PUT",
        "/api/config/checkout/schema",
        {
            "schema": {
                "type": "object",
                "properties": {
                    "retries": {"type": "integer", "minimum": 0},
                    "db": {
                        "type": "object",
                        "properties": {"pool": {"type": "integer", "minimum": 1}},
                    },
                },
            }
        },
    )
    api.ok(
        "PUT",
        "/api/config/billing",
        {"environment": "production", "config": {"provider": "stripe", "timeoutMs": 2500}},
    )
    api.ok(
        "PUT",
        "/api/secrets/checkout/DB_PASSWORD?environment=production",
        {
            "value": secret_value("console-seed"),
            "ttlSeconds": 86400 * 30,
            "description": "primary database",
        },
    )
    api.ok(
        "POST",
        "/api/features",
        {
            "name": "New Checkout Flow",
            "description": "one-page checkout",
            "enabled": True,
            "rollout": {"percentage": 50, "userGroups": ["beta"], "regions": ["eu"]},
            "variants": [
                {"id": "control", "name": "Control", "weight": 50, "configuration": {"steps": 3}},
                {"id": "onepage", "name": "One page", "weight": 50, "configuration": {"steps": 1}},
            ],
            "tags": ["checkout"],
        },
    )
    api.ok("POST", "/api/features", {"name": "Dark Mode", "enabled": False, "tags": ["ui"]})
    api.ok(
        "POST",
        "/api/features",
        {
            "name": "Holiday Banner",
            "description": "the seasonal banner on the home page",
            "enabled": True,
            "rollout": {
                "percentage": 100,
                "regions": ["eu", "us"],
                "excludeUserIds": ["u-blocked"],
                "startDate": "2025-12-01T00:00:00Z",
                "endDate": "2099-01-06T00:00:00Z",
            },
            "rules": [{"attribute": "plan", "operator": "in", "values": ["pro", "team"]}],
            "variants": [
                {"id": "red", "weight": 70, "configuration": {"color": "#c00", "text": "Sale"}},
                {"id": "green", "weight": 30, "configuration": {"color": "#070", "text": "Sale"}},
            ],
            "dependencies": ["dark_mode"],
            "environments": {"staging": {"rollout": {"percentage": 100, "regions": []}}},
            "tags": ["marketing", "ui"],
        },
    )
    api.ok(
        "POST",
        "/api/features",
        {"name": "Search v2", "enabled": True, "tags": ["search"], "rollout": {"percentage": 10}},
    )
    for i in range(40):
        api.ok(
            "POST",
            "/api/features/evaluate",
            {
                "flags": ["new_checkout_flow"],
                "context": {"userId": f"u-{i}", "userGroup": "beta", "region": "eu"},
            },
        )
    api.ok(
        "POST",
        "/api/services/register",
        {
            "serviceName": "checkout",
            "displayName": "Checkout",
            "version": "2.4.1",
            "endpoints": ["http://10.0.0.5:8080"],
            "requiredConfigs": ["db.host", "payments.key"],
            "environment": "production",
            "tags": ["web"],
        },
    )
    if health_url is not None:
        api.ok(
            "POST",
            "/api/services/register",
            {
                "serviceName": "search",
                "displayName": "Search",
                "version": "5.0.2",
                "endpoints": [health_url],
                "healthCheck": health_url,
                "environment": "production",
                "requiredConfigs": [],
            },
        )
    api.ok(
        "POST",
        "/api/services/register",
        {
            "serviceName": "billing",
            "version": "1.9.0",
            "requiredConfigs": ["provider"],
            "environment": "production",
        },
    )


@pytest.fixture(scope="module")
def proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp_path_factory.mktemp("console") / "data").start()
    try:
        seed(Api(daemon))
        yield daemon
    finally:
        daemon.kill()


@pytest.fixture(scope="module")
def api(proc: DaemonProcess) -> Api:
    return Api(proc)


# -- the browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


class Console:
    """One browser context (its own cookies) with the console open."""

    def __init__(self, browser: Browser, base: str, **options: Any) -> None:
        self.base = base
        self.context: BrowserContext = browser.new_context(
            viewport=options.pop("viewport", {"width": 1280, "height": 860}), **options
        )
        self.page: Page = self.context.new_page()
        self.page.set_default_timeout(10_000)
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("dialog", self._dialog)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def open(self, hash_: str = "") -> Page:
        self.page.goto(f"{self.base}/ui/{hash_}")
        return self.page

    def sign_in(self, token: str, hash_: str = "") -> Page:
        page = self.open(hash_)
        page.get_by_label("Token").fill(token)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("navigation", name="Main")).to_be_visible()
        return page

    def go(self, hash_: str) -> Page:
        """Navigate inside the console (no page load)."""
        self.page.evaluate("h => { location.hash = h }", hash_)
        return self.page

    def shot(self, name: str, *, full_page: bool = True) -> None:
        if SHOTS:
            Path(SHOTS).mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=full_page)

    def close(self) -> None:
        self.context.close()
        assert self.errors == [], self.errors  # no script error on any page
        assert self.dialogs == [], self.dialogs  # nothing ran alert()


@pytest.fixture
def console(browser: Browser, proc: DaemonProcess) -> Iterator[Console]:
    c = Console(browser, proc.url)
    yield c
    c.close()


@pytest.fixture
def admin(console: Console, proc: DaemonProcess) -> Page:
    return console.sign_in(proc.token)


# -- the files: headers, size, nothing from elsewhere ---------------------------------------


ASSETS = ("/ui/", "/ui/app.js", "/ui/app.css", "/ui/icon.svg")


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_console_files_carry_a_strict_policy_and_stay_small(proc: DaemonProcess) -> None:
    transferred = 0
    for path in ASSETS:
        status, headers, body = _get(proc.url + path, {"Accept-Encoding": "gzip"})
        assert status == 200, path
        csp = headers["Content-Security-Policy"]
        for directive in ("default-src 'self'", "script-src 'self'", "frame-ancestors 'none'"):
            assert directive in csp, (path, directive)
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Content-Encoding"] == "gzip"
        transferred += len(body)
        text = gzip.decompress(body).decode()
        # Nothing is fetched from elsewhere: the only absolute URL is the SVG namespace.
        urls = set(re.findall(r"https?://[^\s'\"`)]+", text)) - {"http://www.w3.org/2000/svg"}
        assert urls == set(), (path, urls)
    assert transferred < 200_000  # the whole first page, compressed as browsers get it
    # Revalidation costs nothing; /ui goes to /ui/; an unknown file is a 404.
    _, headers, _ = _get(proc.url + "/ui/app.js")
    status, _, body = _get(proc.url + "/ui/app.js", {"If-None-Match": headers["ETag"]})
    assert status == 304 and body == b""
    request = urllib.request.Request(proc.url + "/ui", method="GET")
    opener = urllib.request.build_opener(NoRedirect())
    try:
        opener.open(request, timeout=10)
        raise AssertionError("expected a redirect")
    except urllib.error.HTTPError as error:
        assert error.code == 308 and error.headers["Location"] == "/ui/"
    assert _get(proc.url + "/ui/nothing.js")[0] == 404


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def test_index_has_no_inline_script() -> None:
    from fpcd.api.routes_ui import UI_DIR

    html = (UI_DIR / "index.html").read_text()
    for script in re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S):
        assert "src=" in script[0] and script[1].strip() == ""
    assert "style=" not in html
    # The script builds the page with DOM calls only: nothing parses HTML.
    js = re.sub(r"^\s*//.*$", "", (UI_DIR / "app.js").read_text(), flags=re.M)  # code only
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in js, sink


# -- the session: cookie, CSRF, origin ------------------------------------------------------


async def test_session_cookie_csrf_and_origin(proc: DaemonProcess, api: Api) -> None:
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for an IP address host
    async with aiohttp.ClientSession(base_url=proc.url, cookie_jar=jar) as http:
        async with http.post("/ui/session", json={"token": "not-a-token"}) as r:
            assert r.status == 401
        async with http.post("/ui/session", json={"token": proc.token}) as r:
            assert r.status == 201
            cookie = r.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
            me = await r.json()
        assert me["subject"] == "admin" and me["signedIn"] is True and me["csrfToken"]
        # Reads need only the cookie.
        async with http.get("/api/config") as r:
            assert r.status == 200
        body = {"environment": "production", "config": {"x": 1}}
        # A change without the CSRF token, or with a wrong one, is refused.
        async with http.put("/api/config/csrf-test", json=body) as r:
            assert r.status == 403
            assert r.content_type == "application/problem+json"
            assert "X-CSRF-Token" in (await r.json())["detail"]
        async with http.put(
            "/api/config/csrf-test", json=body, headers={"X-CSRF-Token": "0" * 64}
        ) as r:
            assert r.status == 403
        csrf = {"X-CSRF-Token": me["csrfToken"]}
        # From another origin, even with the token (and for reads and WebSockets too).
        foreign = {**csrf, "Origin": "http://evil.example"}
        async with http.put("/api/config/csrf-test", json=body, headers=foreign) as r:
            assert r.status == 403
        async with http.get("/api/config", headers={"Origin": "http://evil.example"}) as r:
            assert r.status == 403
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect("/ws", origin="http://evil.example")
        assert refused.value.status == 403
        async with http.ws_connect("/ws", origin=proc.url) as ws:  # the console's own origin
            await ws.send_json({"type": "SUBSCRIBE", "serviceName": "csrf-test"})
            assert (await ws.receive_json())["type"] == "SUBSCRIBED"
        async with http.put(
            "/api/config/csrf-test", json=body, headers={**csrf, "Origin": proc.url}
        ) as r:
            assert r.status == 200
        assert api.ok("GET", "/api/config/csrf-test?environment=production")["config"] == {"x": 1}
        # A bearer token is not a cookie session: no CSRF token needed (API clients).
        async with http.put(
            "/api/config/csrf-test",
            json={**body, "config": {"x": 2}},
            headers={"Authorization": f"Bearer {proc.token}"},
        ) as r:
            assert r.status == 200
        # Signing out needs the CSRF token too, then clears the cookie.
        async with http.delete("/ui/session") as r:
            assert r.status == 403
        async with http.delete("/ui/session", headers=csrf) as r:
            assert r.status == 204
        async with http.get("/ui/session") as r:
            assert r.status == 401
        async with http.get("/api/config") as r:
            assert r.status == 401
    # A cookie holding a bad token: 401, and the cookie is cleared.
    headers = {"Cookie": "fpcd_session=bad.token.value"}
    async with (
        aiohttp.ClientSession(base_url=proc.url) as http,
        http.get("/ui/session", headers=headers) as r,
    ):
        assert r.status == 401
        assert "fpcd_session=;" in r.headers["Set-Cookie"]


async def test_the_session_cookie_lives_until_the_token_expires_in_the_daemons_time(
    tmp_path: Path,
) -> None:
    """The cookie's Max-Age is what is left of the token at the daemon's clock (the one
    that judges its expiry), not at the host's."""
    clock = MovableClock()
    daemon = Daemon(make_settings(tmp_path), clock=clock)
    await daemon.start()
    try:
        token = issue_token(daemon, "viewer", ttl_seconds=7200)
        clock.offset = timedelta(minutes=75)  # 45 minutes of the token are left
        left = 45 * 60 + daemon.settings.auth.leeway  # accepted until exp + auth.leeway
        async with (
            aiohttp.ClientSession(base_url=daemon.addresses["api"]) as http,
            http.post("/ui/session", json={"token": token}) as r,
        ):
            assert r.status == 201
            max_age = int(r.cookies["fpcd_session"]["max-age"])
        assert left - 60 <= max_age <= left  # the host's clock would give 2 h
    finally:
        await daemon.stop()


# -- in the browser ---------------------------------------------------------------------------


def test_sign_in_keeps_the_token_out_of_reach_of_scripts(
    console: Console, proc: DaemonProcess
) -> None:
    page = console.open()
    expect(page.get_by_role("heading", name="Sign in to fpcd")).to_be_visible()
    page.get_by_label("Token").fill("wrong")
    page.get_by_label("Token").press("Enter")  # keyboard: Enter submits
    expect(page.get_by_role("alert")).to_contain_text("Sign-in refused")
    page.get_by_label("Token").fill(proc.token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#whoami")).to_contain_text("admin")
    assert page.evaluate("document.cookie") == ""  # HttpOnly: invisible to scripts
    (cookie,) = [c for c in console.context.cookies() if c["name"] == "fpcd_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    # What the first page cost: the document and everything it loaded, as transferred.
    page.reload()
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()
    transferred = page.evaluate(
        """() => performance.getEntriesByType('navigation').concat(
             performance.getEntriesByType('resource')).reduce((n, e) => n + e.encodedBodySize, 0)"""
    )
    assert 0 < transferred < 200_000
    expect(page.locator("#live")).to_have_text("Live")  # the WebSocket is up
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in to fpcd")).to_be_visible()
    assert [c for c in console.context.cookies() if c["name"] == "fpcd_session"] == []


def test_effective_config_shows_the_layer_of_each_value(admin: Page, console: Console) -> None:
    console.go("#/configs/checkout/production")
    table = admin.locator("#effective-values")
    expect(table).to_be_visible()
    host = table.locator("tr", has=admin.locator("code", has_text=re.compile(r"^db\.host$")))
    expect(host.locator("td").nth(0)).to_have_text('"db.prod.internal"')
    expect(host.locator("td").nth(1)).to_have_text("production v2")
    port = table.locator("tr", has=admin.locator("code", has_text=re.compile(r"^db\.port$")))
    expect(port.locator("td").nth(0)).to_have_text("5432")
    expect(port.locator("td").nth(1)).to_have_text("default v1")
    console.go("#/configs/checkout/production/layers")
    expect(admin.get_by_role("heading", name="default layer")).to_be_visible()
    expect(admin.get_by_role("heading", name="production layer")).to_be_visible()
    console.go("#/configs/checkout/production/schema")
    expect(admin.get_by_label("JSON Schema")).to_have_value(re.compile('"minimum": 0'))


def test_edit_shows_schema_errors_at_their_paths_and_conflicts(
    admin: Page, console: Console, api: Api
) -> None:
    api.ok(
        "PUT",
        "/api/config/shop/schema",
        {
            "schema": {
                "type": "object",
                "properties": {"retries": {"type": "integer", "minimum": 0}},
            }
        },
    )
    api.ok("PUT", "/api/config/shop", {"environment": "production", "config": {"retries": 1}})
    console.go("#/configs/shop/production/edit")
    editor = admin.get_by_label("Layer JSON (production)")
    expect(editor).to_have_value(re.compile('"retries": 1'))
    expect(admin.locator("#edit-base")).to_contain_text('If-Match "1"')
    editor.fill('{"retries": -1}')
    admin.get_by_role("button", name="Save", exact=True).click()
    errors = admin.locator(".field-errors li")
    expect(errors).to_have_count(1)
    expect(errors.locator(".path")).to_have_text("$.config.retries")
    expect(errors.locator(".message")).to_contain_text("minimum of 0")
    assert api.ok("GET", "/api/config/shop?environment=production")["version"] == 1
    # Not JSON at all: said so, nothing sent.
    editor.fill('{"retries": ')
    admin.get_by_role("button", name="Save", exact=True).click()
    expect(admin.get_by_role("alert")).to_contain_text("Not valid JSON")
    editor.fill('{"retries": 2}')
    admin.get_by_role("button", name="Save", exact=True).click()
    expect(admin.locator("#edit-base")).to_contain_text('If-Match "2"')
    assert api.ok("GET", "/api/config/shop?environment=production")["config"] == {"retries": 2}
    # Someone else writes while this editor holds an edit: a conflict, never an overwrite.
    editor.fill('{"retries": 7}')
    api.ok("PUT", "/api/config/shop", {"environment": "production", "config": {"retries": 3}})
    expect(admin.locator("#edit-newer")).to_contain_text("Version 3 was written")  # live
    admin.get_by_role("button", name="Save", exact=True).click()
    expect(admin.get_by_role("alert")).to_contain_text("Conflict")
    expect(admin.get_by_role("alert")).to_contain_text("changed since you loaded version 2")
    assert api.ok("GET", "/api/config/shop?environment=production")["config"] == {"retries": 3}


def test_history_diff_and_rollback_naming_both_versions(
    admin: Page, console: Console, api: Api
) -> None:
    for retries in (1, 2, 3):
        api.ok(
            "PUT",
            "/api/config/rb",
            {"environment": "production", "config": {"retries": retries, "region": "eu"}},
        )
    console.go("#/configs/rb/production/history")
    history = admin.locator("#history")
    expect(history.locator("tbody tr")).to_have_count(3)
    # Compare 1 with 3, side by side.
    admin.get_by_label("Compare version 1 as A").check()
    expect(admin.locator(".diff-summary")).to_have_text("1 line removed, 1 added")
    diff = admin.get_by_role("table", name="Differences between version 1 and version 3")
    expect(diff.locator("td.del")).to_have_count(1)
    expect(diff.locator("td.del")).to_contain_text('"retries": 1')
    expect(diff.locator("td.add")).to_contain_text('"retries": 3')
    # Roll back: the confirmation names both versions; cancelling changes nothing.
    admin.get_by_role("button", name="Roll back to version 1").click()
    dialog = admin.get_by_role("dialog")
    expect(dialog).to_contain_text("Roll back rb/production from version 3 to version 1?")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_have_count(0)
    assert api.ok("GET", "/api/config/rb?environment=production")["version"] == 3
    admin.get_by_role("button", name="Roll back to version 1").click()
    admin.get_by_role("dialog").get_by_role("button", name="Roll back to version 1").click()
    expect(history.locator("tbody tr")).to_have_count(4)
    doc = api.ok("GET", "/api/config/rb?environment=production")
    assert doc["version"] == 4 and doc["config"] == {"retries": 1, "region": "eu"}


def test_flag_switch_toggles_and_the_api_agrees(admin: Page, console: Console, api: Api) -> None:
    api.ok("POST", "/api/features", {"name": "Toggle Me", "enabled": False, "tags": ["t1"]})
    console.go("#/flags")
    switch = admin.get_by_role("switch", name="toggle_me")
    expect(switch).to_have_attribute("aria-checked", "false")
    switch.click()
    expect(switch).to_have_attribute("aria-checked", "true")
    assert api.ok("GET", "/api/features/toggle_me")["enabled"] is True
    # By keyboard: focus the switch and press Space.
    admin.get_by_role("switch", name="toggle_me").focus()
    admin.keyboard.press("Space")
    expect(admin.get_by_role("switch", name="toggle_me")).to_have_attribute("aria-checked", "false")
    assert api.ok("GET", "/api/features/toggle_me")["enabled"] is False
    expect(admin.get_by_role("switch", name="toggle_me")).to_be_focused()
    # Search and tag filters.
    admin.get_by_label("Search flags").fill("toggle")
    expect(admin.locator("#flags tbody tr")).to_have_count(1)
    admin.get_by_label("Search flags").fill("")
    admin.get_by_label("Tag").select_option("checkout")
    expect(admin.locator("#flags tbody tr")).to_have_count(1)
    expect(admin.get_by_role("switch", name="new_checkout_flow")).to_be_visible()
    admin.get_by_label("Tag").select_option("")


def test_flag_detail_rollout_evaluation_history_and_analytics(
    admin: Page, console: Console, api: Api
) -> None:
    console.go("#/flags/new_checkout_flow")
    expect(admin.locator("#variants")).to_contain_text("onepage")
    expect(admin.locator("#variants")).to_contain_text('"steps": 1')
    admin.get_by_label("Rollout percentage").fill("75")
    admin.get_by_role("button", name="Save rollout").click()
    expect(admin.locator("#flag-version")).to_have_text("2")
    assert api.ok("GET", "/api/features/new_checkout_flow")["rollout"]["percentage"] == 75
    # The tester: the daemon's own answer and reason.
    console.go("#/flags/new_checkout_flow/evaluate")
    admin.get_by_label("Context (JSON)").fill(
        '{"userId": "u-1", "userGroup": "beta", "region": "eu"}'
    )
    admin.get_by_role("button", name="Evaluate").click()
    expect(admin.locator("#eval-reason")).to_have_text("SPLIT")
    expect(admin.locator("#eval-variant")).to_have_text("onepage")
    admin.get_by_label("Context (JSON)").fill('{"userId": "u-1"}')
    admin.get_by_role("button", name="Evaluate").click()
    expect(admin.locator("#eval-reason")).to_have_text("DEFAULT (not_targeted)")
    # History with a diff of the two versions.
    console.go("#/flags/new_checkout_flow/history")
    expect(admin.locator("#flag-history tbody tr")).to_have_count(2)
    expect(admin.locator("table.diff td.add")).to_contain_text(['"percentage": 75'])
    # Analytics: evaluations per day per variant, as an SVG chart.
    console.go("#/flags/new_checkout_flow/analytics")
    expect(admin.locator("#analytics-total")).to_contain_text("42 evaluations")
    chart = admin.get_by_role("img", name=re.compile("Evaluations of new_checkout_flow per day"))
    expect(chart).to_be_visible()
    assert chart.locator("rect").count() >= 2  # control and onepage today (and the "off")
    legend = admin.get_by_role("list", name="Legend")
    expect(legend).to_contain_text("control")
    expect(legend).to_contain_text("onepage")
    report = api.ok("GET", "/api/features/new_checkout_flow/analytics")
    (today,) = report["daily"]
    assert today["variants"] == report["variants"] and sum(today["variants"].values()) > 0


def test_a_change_made_through_the_api_appears_live(
    admin: Page, console: Console, api: Api
) -> None:
    api.ok("PUT", "/api/config/livesvc", {"environment": "production", "config": {"level": "a"}})
    console.go("#/configs/livesvc/production")
    admin.evaluate("window.__notReloaded = true")
    value = admin.locator("#effective-values tbody tr td").first
    expect(value).to_have_text('"a"')
    expect(admin.locator("#live")).to_have_text("Live")
    started = time.monotonic()
    api.ok("PUT", "/api/config/livesvc", {"environment": "production", "config": {"level": "b"}})
    expect(value).to_have_text('"b"', timeout=5000)
    assert time.monotonic() - started < 5
    # A change to the default layer reaches the environment over it.
    api.ok("PUT", "/api/config/livesvc", {"environment": "default", "config": {"extra": 1}})
    expect(admin.locator("#effective-values")).to_contain_text("extra")
    # Flags too: switched by someone else, the switch follows.
    console.go("#/flags")
    switch = admin.get_by_role("switch", name="dark_mode")
    expect(switch).to_have_attribute("aria-checked", "false")
    api.ok("PATCH", "/api/features/dark_mode", {"enabled": True})
    expect(switch).to_have_attribute("aria-checked", "true")
    api.ok("PATCH", "/api/features/dark_mode", {"enabled": False})
    expect(admin.get_by_role("switch", name="dark_mode")).to_have_attribute("aria-checked", "false")
    assert admin.evaluate("window.__notReloaded") is True


def test_a_viewer_sees_and_cannot_change(browser: Browser, proc: DaemonProcess, api: Api) -> None:
    console = Console(browser, proc.url)
    try:
        page = console.sign_in(api.token("viewer"))
        expect(page.locator("#whoami")).to_contain_text("viewer")
        console.go("#/flags")
        expect(page.get_by_role("switch", name="new_checkout_flow")).to_be_disabled()
        expect(page.get_by_text("Read-only")).to_be_visible()
        console.go("#/configs/checkout/production/edit")
        expect(page.get_by_role("button", name="Save", exact=True)).to_be_disabled()
        expect(page.get_by_text("Read-only")).to_be_visible()
        console.go("#/configs/checkout/production/history")
        expect(page.get_by_role("button", name="Roll back to version 1")).to_be_disabled()
        # The daemon refuses even a request made by hand with the session and its CSRF token.
        status = page.evaluate(
            """async () => {
                 const me = await (await fetch('/ui/session')).json();
                 const r = await fetch('/api/features/new_checkout_flow', {method: 'PATCH',
                   headers: {'Content-Type': 'application/json', 'X-CSRF-Token': me.csrfToken},
                   body: JSON.stringify({enabled: false})});
                 return r.status;
               }"""
        )
        assert status == 403
        assert api.ok("GET", "/api/features/new_checkout_flow")["enabled"] is True
        # Secrets: metadata, but no value to reveal.
        console.go("#/secrets/checkout/production")
        expect(page.locator("tr[data-secret=DB_PASSWORD]")).to_contain_text("hidden")
        expect(page.get_by_role("button", name="Reveal DB_PASSWORD")).to_have_count(0)
    finally:
        console.close()


def test_a_service_scoped_editor_sees_only_its_services(
    browser: Browser, proc: DaemonProcess, api: Api
) -> None:
    console = Console(browser, proc.url)
    try:
        page = console.sign_in(api.token("editor", services=["checkout"]))
        nav = page.get_by_role("navigation", name="Services")
        expect(nav.locator("a.service-link")).to_have_text(["checkout"])
        console.go("#/configs/checkout/production/edit")
        expect(page.get_by_role("button", name="Save", exact=True)).to_be_enabled()
        console.go("#/configs/billing/production")
        expect(page.get_by_role("alert")).to_contain_text("does not allow config:read")
        console.go("#/audit")  # the audit log spans every service
        expect(page.get_by_role("alert")).to_contain_text("every service")
    finally:
        console.close()


def test_user_data_is_rendered_as_text(admin: Page, console: Console, api: Api) -> None:
    api.ok(
        "PUT",
        "/api/config/xss",
        {"environment": "production", "config": {"banner": XSS, XSS: "key"}, "description": XSS},
    )
    api.ok(
        "POST",
        "/api/features",
        {
            "name": "xss flag",
            "description": XSS,
            "tags": [XSS],
            "variants": [{"id": "a", "name": XSS, "configuration": {"html": XSS}}],
        },
    )
    console.go("#/configs/xss/production")
    expect(admin.locator("#effective-values")).to_contain_text(json.dumps(XSS))
    expect(admin.locator("#effective-values")).to_contain_text(f'"{XSS}"')  # the key, quoted
    console.go("#/configs/xss/production/layers")
    expect(admin.locator("pre.json").first).to_contain_text(XSS)
    console.go("#/flags/xss_flag")
    expect(admin.locator("#variants")).to_contain_text(XSS)
    expect(admin.locator("dl.facts").first).to_contain_text(XSS)
    console.go("#/flags")
    expect(admin.locator("#flags")).to_contain_text("xss_flag")
    console.go("#/audit")
    expect(admin.locator("#audit-entries")).to_contain_text("config:xss/production")
    assert admin.locator("img[src=x]").count() == 0
    assert admin.evaluate("document.querySelectorAll('[onerror]').length") == 0
    # (Console.close asserts that no dialog opened and no script error happened.)


def test_secrets_show_metadata_and_a_value_only_when_asked(
    admin: Page, console: Console, api: Api
) -> None:
    value = secret_value("console-reveal")
    api.ok("PUT", "/api/secrets/vault/API_KEY?environment=production", {"value": value})
    console.go("#/secrets/vault/production")
    row = admin.locator("tr[data-secret=API_KEY]")
    expect(row.locator(".access-count")).to_have_text("0")
    assert value not in admin.content()
    admin.get_by_role("button", name="Reveal API_KEY").click()
    expect(row.locator(".secret-value")).to_have_text(value)
    expect(row.locator(".access-count")).to_have_text("1")
    expect(admin.get_by_role("button", name="Hide API_KEY")).to_be_focused()
    # The read is audited like any other.
    entries = api.ok("GET", "/api/audit?target=secret:vault/production")["items"]
    reads = [e for e in entries if e["action"] == "secret.read"]
    assert len(reads) == 1 and reads[0]["actor"] == "admin"
    assert reads[0]["details"]["names"] == ["API_KEY"]
    admin.get_by_role("button", name="Hide API_KEY").click()
    expect(row.locator(".secret-value")).to_have_count(0)
    console.go("#/secrets/checkout/production")
    expect(admin.locator("tr[data-secret=DB_PASSWORD]")).to_contain_text("primary database")


def test_services_page_shows_health_and_missing_configs_live(
    admin: Page, console: Console, api: Api
) -> None:
    console.go("#/services")
    checkout = admin.locator("tr[data-service=checkout]")
    expect(checkout.locator(".missing")).to_contain_text("payments.key")
    expect(checkout.locator(".status")).to_have_text("degraded")
    api.ok("POST", "/api/services/register", {"serviceName": "late-joiner", "version": "0.1.0"})
    expect(admin.locator("tr[data-service=late-joiner]")).to_be_visible()


def test_audit_page_lists_entries_and_verifies_the_chain(
    admin: Page, console: Console, api: Api
) -> None:
    console.go("#/audit")
    expect(admin.locator("#chain-ok")).to_contain_text("Chain verified")
    expect(admin.locator("#audit-entries")).to_contain_text("config.update")
    admin.get_by_label("Target").fill("flag:dark_mode")
    admin.get_by_role("button", name="Filter").click()
    rows = admin.locator("#audit-entries tbody tr")
    expect(rows.first).to_contain_text("flag:dark_mode")
    for text in rows.all_inner_texts():
        assert "flag:dark_mode" in text
    # A new entry appears without reloading.
    api.ok("PATCH", "/api/features/dark_mode", {"description": "audited"})
    expect(rows.first).to_contain_text("flag.update")
    admin.get_by_label("Target").fill("")
    admin.get_by_role("button", name="Filter").click()


def test_readable_on_a_phone(browser: Browser, proc: DaemonProcess) -> None:
    console = Console(browser, proc.url, viewport={"width": 390, "height": 844})
    try:
        page = console.sign_in(proc.token, "#/configs/checkout/production")
        expect(page.locator("#effective-values")).to_be_visible()
        # Nothing wider than the screen but the tables' own scrolling boxes.
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        console.go("#/flags")
        expect(page.get_by_role("switch", name="new_checkout_flow")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
    finally:
        console.close()


def test_anonymous_role_applies_to_the_console(
    browser: Browser, tmp_path: Path, spawn: Any
) -> None:
    anonymous = spawn(env={"FPCD_AUTH__ANONYMOUS_ROLE": "viewer"}).start()
    Api(anonymous).ok("POST", "/api/features", {"name": "Open Flag", "enabled": True})
    console = Console(browser, anonymous.url)
    try:
        page = console.open("#/flags")  # no sign-in page: the anonymous role is in effect
        expect(page.locator("#whoami")).to_contain_text("anonymous (viewer)")
        expect(page.get_by_role("switch", name="open_flag")).to_be_disabled()
        page.get_by_role("link", name="Sign in").click()
        page.get_by_label("Token").fill(anonymous.token)
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#whoami")).to_contain_text("admin")
        console.go("#/flags")
        expect(page.get_by_role("switch", name="open_flag")).to_be_enabled()
    finally:
        console.close()


def test_every_main_page_renders(browser: Browser, spawn: Any) -> None:
    """Each page on a freshly seeded daemon, without a script error; with
    FPCD_CONSOLE_SCREENSHOTS set, the screenshots of docs/console/."""
    fresh = spawn(env={"FPCD_REGISTRY__CHECK_INTERVAL": "0.2"}).start()
    seed(Api(fresh), health_url=f"{fresh.url}/health/live")
    console = Console(browser, fresh.url)
    try:
        page = console.open()
        expect(page.get_by_label("Token")).to_be_visible()
        console.shot("signin")
        console.sign_in(fresh.token, "#/configs/checkout/production")
        pages = [
            ("configs", "#/configs/checkout/production", "#effective-values"),
            ("config-history", "#/configs/checkout/production/history", "table.diff"),
            ("config-edit", "#/configs/checkout/production/edit", "#layer-json"),
            ("flags", "#/flags", "#flags"),
            ("flag-detail", "#/flags/holiday_banner", "#variants"),
            ("flag-analytics", "#/flags/new_checkout_flow/analytics", "svg.chart"),
            ("secrets", "#/secrets/checkout/production", "tr[data-secret]"),
            ("services", "#/services", "tr[data-service=search] .status-healthy"),
            ("audit", "#/audit", "#chain-ok"),
        ]
        for name, hash_, ready in pages:
            console.go(hash_)
            expect(page.locator(ready)).to_be_visible()
            expect(page.locator("h1")).to_be_visible()
            if name == "config-edit":  # as an operator would see a refused edit
                page.get_by_label("Layer JSON (production)").fill(
                    '{\n  "db": {"host": "db.prod.internal", "pool": 0},\n  "retries": -1\n}'
                )
                page.get_by_role("button", name="Save", exact=True).click()
                expect(page.locator(".field-errors li")).to_have_count(2)
            console.shot(name, full_page=name != "audit")  # the log runs long
        phone = Console(browser, fresh.url, viewport={"width": 390, "height": 844})
        try:
            phone.sign_in(fresh.token, "#/flags")
            expect(phone.page.locator("#flags")).to_be_visible()
            phone.shot("phone-flags")
        finally:
            phone.close()
    finally:
        console.close()
