"""The web console in Chromium (headless): bytes of the first page, time until it can be
used, and how long a change made through the API takes to show on an open page.

Run: python -m benchmarks.console [--rounds N]   (needs `chromium` and Playwright, which
the `test` extra installs)

Each round opens a fresh browser context (cold cache) against one `fpcd serve`:
- the sign-in page: every byte the browser received for it (`transferSize` of the
  document and what it loaded: headers included, compressed bodies), and the time from
  navigation start until the page is usable (the console's `fpcd:ready` performance
  mark, set once the first page is drawn and focused: here the Token field);
- the configuration page of a signed-in operator (the session cookie set beforehand):
  the same, with the values drawn from the REST API's documents;
- a config write through the REST API until the new value is in the open page's DOM
  (a MutationObserver stamps the moment; both clocks are this machine's).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from typing import Any

from playwright.sync_api import Browser, Page, sync_playwright

from benchmarks.common import fpcd_daemon, put_json, write_results

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]

BYTES = """() => performance.getEntriesByType('navigation')
  .concat(performance.getEntriesByType('resource'))
  .reduce((n, e) => n + e.transferSize, 0)"""


def usable_at(page: Page) -> float:
    """When the console marked its first page usable (ms from navigation start)."""
    page.wait_for_function("() => performance.getEntriesByName('fpcd:ready').length > 0")
    return float(page.evaluate("performance.getEntriesByName('fpcd:ready')[0].startTime"))


def sign_in_page(browser: Browser, url: str) -> dict[str, float]:
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{url}/ui/", wait_until="domcontentloaded")
    ready = usable_at(page)
    sent = page.evaluate(BYTES)
    context.close()
    return {"ms": ready, "bytes": sent}


def config_page(browser: Browser, url: str, token: str) -> dict[str, float]:
    context = browser.new_context()
    page = context.new_page()
    page.request.post(f"{url}/ui/session", data={"token": token})  # sets the cookie
    page.goto(f"{url}/ui/#/configs/checkout/production", wait_until="domcontentloaded")
    ready = usable_at(page)
    sent = page.evaluate(BYTES)
    context.close()
    return {"ms": ready, "bytes": sent}


def live_latency(browser: Browser, url: str, token: str, rounds: int) -> list[float]:
    context = browser.new_context()
    page = context.new_page()
    page.request.post(f"{url}/ui/session", data={"token": token})
    page.goto(f"{url}/ui/#/configs/checkout/production")
    page.wait_for_selector("#effective-values")
    page.wait_for_function("() => document.getElementById('live').textContent === 'Live'")
    latencies = []
    for i in range(rounds):
        marker = f"live-{i}-{time.time_ns()}"
        page.evaluate(
            """marker => {
                 window.__seen = null;
                 new MutationObserver((_, obs) => {
                   if (document.body.textContent.includes(marker)) {
                     window.__seen = performance.timeOrigin + performance.now();
                     obs.disconnect();
                   }
                 }).observe(document.body, {subtree: true, childList: true, characterData: true});
               }""",
            marker,
        )
        sent = time.time() * 1000
        put_json(
            f"{url}/api/config/checkout",
            {"environment": "production", "config": {"marker": marker, "retries": i}},
            token=token,
        )
        page.wait_for_function("() => window.__seen !== null")
        latencies.append(page.evaluate("window.__seen") - sent)
    context.close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with fpcd_daemon() as d, sync_playwright() as p:
        url, token = d["url"], d["token"]
        put_json(
            f"{url}/api/config/checkout",
            {"environment": "default", "config": {"db": {"host": "localhost"}, "retries": 3}},
            token=token,
        )
        put_json(
            f"{url}/api/config/checkout",
            {"environment": "production", "config": {"db": {"host": "db.prod"}}},
            token=token,
        )
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        version = browser.version
        sign_in_page(browser, url)  # the browser's own first start is not the console's
        signin = [sign_in_page(browser, url) for _ in range(args.rounds)]
        configs = [config_page(browser, url, token) for _ in range(args.rounds)]
        live = live_latency(browser, url, token, args.rounds)
        browser.close()
        load = os.getloadavg()

    def summary(runs: list[dict[str, float]]) -> dict[str, Any]:
        return {
            "ms_median": round(statistics.median(r["ms"] for r in runs), 1),
            "ms_max": round(max(r["ms"] for r in runs), 1),
            "kb": round(statistics.median(r["bytes"] for r in runs) / 1024, 1),
        }

    first, signed = summary(signin), summary(configs)
    live_ms = {
        "p50": round(statistics.median(live), 1),
        "max": round(max(live), 1),
    }
    rows = [
        ["sign-in page (first page)", first["kb"], first["ms_median"], first["ms_max"]],
        ["configuration page, signed in", signed["kb"], signed["ms_median"], signed["ms_max"]],
        ["API write until shown on an open page", "", live_ms["p50"], live_ms["max"]],
    ]
    write_results(
        "console",
        "Web console in Chromium (headless)",
        {"chromium": version, "sign_in": first, "config_page": signed, "live_ms": live_ms},
        rows,
        ["page", "KB transferred", "ms, median", "ms, max"],
        [
            f"Chromium {version}, {args.rounds} rounds, each in a fresh browser context (cold "
            "cache). KB: everything the browser received for the page (headers included, "
            "bodies gzip-compressed); ms: from navigation start to the page usable (the "
            "Token field; the values table with data from the REST API), and from the REST "
            "write being sent to the new value in the open page's DOM (over the WebSocket). "
            "Targets (issue 20): first page under 200 KB, interactive well under a second, "
            "live within a second.",
            f"Load average while measuring: {load[0]:.1f} (1 min) on {os.cpu_count()} CPUs "
            "(other work on the machine lengthens the times; the bytes do not change).",
        ],
    )


if __name__ == "__main__":
    main()
