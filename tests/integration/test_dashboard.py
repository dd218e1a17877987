"""The live dashboard (fastlb/dashboard/index.html, docs/dashboard.md) in a real browser.

A real fastlb process with an admin API and fast active checks sits in front of three real
backends (tests.support.backend, in-process) while a thread sends it bounded traffic. Headless
Chromium, driven by Selenium through the system chromedriver (never Selenium Manager: the
driver path is given, so nothing is downloaded), opens http://ADMIN/dashboard and reads the
page's fixed DOM contract:

    body[data-loaded="1"]                       the first stats arrived
    [data-pool="NAME"]                          one card per pool
    [data-backend="HOST:PORT"][data-state=S]    one row per backend, updated in place
    [data-backend] .rps                         that backend's requests/s, a plain number

Without selenium, chromium or chromedriver the browser test skips, naming what to install
(Debian: ``apt-get install chromium chromium-driver``; ``pip install selenium``).

Every wait polls with a deadline; the traffic is bounded in requests and seconds.
"""

import os
import re
import shutil
import threading
import time

import httpx
import pytest

from tests.integration.conftest import free_port, pool_doc
from tests.support.wait import wait_for

CHROMIUM = "/usr/bin/chromium"
DEBIAN_PACKAGES = "Debian packages chromium chromium-driver (apt-get install chromium chromium-driver)"
POLL = 0.2  # seconds between two reads of the page
# health checks every 0.2 s, one failure takes a backend down: a stopped backend leaves
# `up` within ~0.5 s; the page polls every second. The bounds below add a wide margin.
HEALTH = {"path": "/", "interval": 0.2, "timeout": 0.2, "rise": 1, "fall": 1}
ROWS_JS = """
return Array.from(document.querySelectorAll('[data-backend]')).map(function (r) {
  var rps = r.querySelector('.rps');
  var pool = r.closest('[data-pool]');
  return [r.getAttribute('data-backend'), r.getAttribute('data-state'), rps ? rps.textContent : null,
          pool ? pool.getAttribute('data-pool') : null];
});
"""


# ------------------------------------------------------------------------ helpers

def rps_value(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return 0.0


def admin_url(proc, path):
    return "http://127.0.0.1:%d%s" % (proc.admin_port, path)


def stats_text(proc):
    """The stats JSON as fastlb serves it (for assertion messages)."""
    try:
        return httpx.get(admin_url(proc, "/api/v1/stats"), timeout=5).text[:3000]
    except httpx.HTTPError as exc:
        return "GET /api/v1/stats failed: %r" % exc


class Traffic:
    """One keep-alive httpx client in a thread, paced to ``rate`` requests a second, until
    ``stop()``, ``max_requests`` or ``max_seconds``. Failures (a backend being stopped) are counted,
    not raised: the dashboard shows them."""

    def __init__(self, url, rate=60.0, max_requests=3000, max_seconds=60.0):
        self.url = url
        self.interval = 1.0 / rate
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.done = threading.Event()
        self.ok = 0
        self.failed = 0
        self.thread = threading.Thread(target=self._run, name="dashboard-traffic", daemon=True)

    def start(self):
        self.thread.start()
        return self

    def _run(self):
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(timeout=5.0) as client:
            nxt = time.monotonic()
            while not self.done.is_set() and time.monotonic() < deadline and self.ok + self.failed < self.max_requests:
                try:
                    r = client.get(self.url)
                    if r.status_code == 200:
                        self.ok += 1
                    else:
                        self.failed += 1
                except httpx.HTTPError:
                    self.failed += 1
                nxt += self.interval
                pause = nxt - time.monotonic()
                if pause > 0:
                    self.done.wait(pause)
                else:
                    nxt = time.monotonic()

    def stop(self):
        self.done.set()
        self.thread.join(15)
        assert not self.thread.is_alive(), "the traffic thread hung"


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium through the system chromedriver; skips when any piece is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not importable (pip install selenium); the browser test also needs the "
                    + DEBIAN_PACKAGES)
    driver_path = shutil.which("chromedriver")
    binary = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if not driver_path or not binary:
        pytest.skip("headless browser not installed: chromium=%s chromedriver=%s; install the %s"
                    % (binary, driver_path, DEBIAN_PACKAGES))
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
                "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions",
                "--user-data-dir=%s" % (tmp_path / "chromium-profile")):
        options.add_argument(arg)
    # The driver path is given: Selenium uses it and never runs Selenium Manager (no download).
    service = Service(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(20)
        driver.set_script_timeout(10)
        yield driver
    finally:
        driver.quit()


# ------------------------------------------------------------------------ tests
def test_dashboard_shows_live_backends_and_a_stopped_one_leaving_up(fastlb, backends, browser, tmp_path):
    doc = pool_doc(backends, admin=True)
    doc["pools"]["p"]["health_check"] = dict(HEALTH)
    lb = fastlb(doc)
    addresses = [b.address for b in backends]
    traffic = Traffic(lb.url("/")).start()
    try:
        browser.get(admin_url(lb, "/dashboard"))

        def all_up_with_traffic():
            rows = browser.execute_script(ROWS_JS)
            seen = {r[0]: r for r in rows}
            ok = all(a in seen and seen[a][1] == "up" and rps_value(seen[a][2]) > 0 and seen[a][3] == "p"
                     for a in addresses)
            return ok and rows

        rows = wait_for(all_up_with_traffic, 15, POLL)
        assert rows, "the dashboard did not show 3 backends up with traffic within 15 s: rows %r\n" \
                     "traffic ok=%d failed=%d\nstats: %s" % (
                         browser.execute_script(ROWS_JS), traffic.ok, traffic.failed, stats_text(lb))
        assert browser.execute_script("return document.body.getAttribute('data-loaded')") == "1"
        assert sorted(r[0] for r in rows) == sorted(addresses)
        assert browser.execute_script("return document.querySelectorAll('[data-pool=\"p\"]').length") == 1
        text = browser.execute_script("return document.body.innerText")
        for a in addresses:
            assert a in text
        assert "connection to fastlb lost" not in text.lower()

        victim = backends[1]
        victim.stop()  # its listener closes and its connections are aborted: checks fail from now on

        def victim_left_up():
            states = {r[0]: r[1] for r in browser.execute_script(ROWS_JS)}
            return states.get(victim.address) not in (None, "up") and states

        states = wait_for(victim_left_up, 10, POLL)
        assert states, "the stopped backend %s still shows up after 10 s: %r\nstats: %s" % (
            victim.address, browser.execute_script(ROWS_JS), stats_text(lb))
        assert states[victim.address] in ("down", "ejected", "checking"), states
        others = [a for a in addresses if a != victim.address]
        assert all(states[a] == "up" for a in others), states
        # the page updated its rows in place: still exactly one row per backend
        assert sorted(r[0] for r in browser.execute_script(ROWS_JS)) == sorted(addresses)

        time.sleep(1.2)  # one more poll, so the charts include the change
        shot = tmp_path / "dashboard.png"
        assert browser.save_screenshot(str(shot))
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
        assert len(data) > 20000, "screenshot suspiciously small (%d bytes): %s" % (len(data), shot)
    finally:
        traffic.stop()
    assert traffic.ok > 0

    # fastlb goes away: the page keeps its last data and says it is retrying
    lb.terminate()

    def banner_shown():
        text = browser.execute_script("return document.body.innerText")
        return "connection to fastlb lost" in text.lower() and text

    text = wait_for(banner_shown, 8, POLL)
    assert text, "no 'connection lost' banner within 8 s of fastlb stopping"
    assert len(browser.execute_script(ROWS_JS)) == 3, "the page was blanked when the connection was lost"


def test_dashboard_is_served_as_html_and_self_contained(fastlb):
    lb = fastlb(pool_doc(["127.0.0.1:%d" % free_port()], admin=True))
    for path in ("/dashboard", "/dashboard/"):
        r = httpx.get(admin_url(lb, path), timeout=5)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
        assert r.headers["content-type"].split(";")[0].strip().lower() == "text/html", r.headers
        body = r.text
        assert "<html" in body.lower() and "data-backend" in body and "/api/v1/stats" in body
        # nothing fetched from anywhere else: no absolute or protocol-relative URL, no external
        # script, stylesheet, image, font or import; every src/href is same-document or data:
        urls = re.findall(r"(?i)https?://[^\s\"'<>)]*", body)
        assert not urls, "external references: %r" % urls[:10]
        assert not re.search(r"""(?i)(?:src|href)\s*=\s*["']?\s*//""", body), "protocol-relative URL"
        for m in re.finditer(r"""(?i)\b(?:src|href)\s*=\s*["']([^"']*)["']""", body):
            assert m.group(1).startswith(("data:", "#")), "resource reference: %r" % m.group(0)
        assert not re.search(r"(?i)@import|@font-face", body)
        for m in re.finditer(r"(?i)url\(\s*['\"]?([^'\")]*)", body):
            assert m.group(1).startswith(("data:", "#")), "CSS url(): %r" % m.group(0)
    # the API the page reads is there, as JSON
    r = httpx.get(admin_url(lb, "/api/v1/stats"), timeout=5)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert {"version", "pools", "totals"} <= set(r.json())
