"""Usage as SendGrid's stats through SendGrid's own Python client (its raw
path builder), every answer held to the OpenAPI document; and the console's
charts in headless Chromium: bars for the hour with traffic and none for the
others, the keys list sorted by the last 24 hours, the account's busiest
keys. CONSOLE_SCREENSHOTS=1 writes docs/console-usage.png."""
import datetime
import json
import os
import subprocess
import time

import pytest
from selenium.webdriver.common.by import By
from sendgrid import SendGridAPIClient

from conftest import BIN, Scopegate
from test_console import CHROMIUM, DRIVER, browser, click_and_load, shot, sign_in, url  # noqa: F401
from test_rest import check_against_spec


@pytest.fixture(scope="module")
def server():
    server = Scopegate("--usage-flush-secs", "1")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def admin_token(server):
    return open(os.path.join(server.data, "admin.token")).read().strip()


def today():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")


def checks(server, token, scope, n):
    """`n` Authorize.Check calls through grpcurl-free `scopegate check`."""
    for _ in range(n):
        subprocess.run([BIN, "check", "--server", f"http://{server.addr}", "--scope", scope],
                       env=dict(os.environ, SCOPEGATE_CHECK_TOKEN=token), capture_output=True)


@pytest.fixture(scope="module")
def traffic(server, admin_token):
    """Two keys in acme: `busy` decided 12 times (9 allowed, 3 lacking a
    scope), `idle` never; both counted once the flush has run."""
    busy = server.create_key("mail.send")
    idle = server.create_key("mail.send")
    checks(server, busy["token"], "mail.send", 9)
    checks(server, busy["token"], "stats.read", 3)
    client = SendGridAPIClient(api_key=admin_token, host=f"http://{server.http_addr}")
    deadline = time.time() + 15
    while True:
        answer = client.client.api_keys._(busy["key"]["key_id"]).stats.get(query_params={"start_date": today()})
        if json.loads(answer.body)[0]["stats"][0]["metrics"]["insufficient_scope"] == 3:
            return busy["key"]["key_id"], idle["key"]["key_id"]
        assert time.time() < deadline, answer.body
        time.sleep(0.2)


def test_sendgrids_client_reads_a_keys_and_an_accounts_stats(server, admin_token, traffic):
    busy, idle = traffic
    client = SendGridAPIClient(api_key=admin_token, host=f"http://{server.http_addr}")
    answer = client.client.api_keys._(busy).stats.get(
        query_params={"start_date": today(), "group_by": "scope"})
    assert answer.status_code == 200
    check_against_spec("GET", f"/v3/api_keys/{busy}/stats", answer.status_code,
                       {k.lower(): v for k, v in answer.headers.items()}, answer.body)
    stats = json.loads(answer.body)[0]["stats"]
    assert [(s["type"], s["name"]) for s in stats] == [("scope", "mail.send"), ("scope", "stats.read")]
    assert stats[0]["metrics"]["allowed"] == 9 and stats[1]["metrics"]["insufficient_scope"] == 3

    answer = client.client.stats.get(query_params={"start_date": today(), "top_keys": 2},
                                     request_headers={"on-behalf-of": "acme"})
    check_against_spec("GET", "/v3/stats", answer.status_code,
                       {k.lower(): v for k, v in answer.headers.items()}, answer.body)
    stats = json.loads(answer.body)[0]["stats"]
    assert stats[0]["metrics"]["allowed"] == 9
    assert [(s.get("type"), s.get("name")) for s in stats[1:]] == [("api_key", busy)], "an idle key is not busy"

    hours = client.client.api_keys._(busy).stats.get(query_params={
        "aggregated_by": "hour", "start_time": int(time.time()) - 3 * 3600})
    points = json.loads(hours.body)
    assert len(points) == 4 and all("time" in point for point in points)
    assert sum(p["stats"][0]["metrics"]["allowed"] for p in points) == 9

    # Bad input: SendGrid's error body, through its client's exception.
    from python_http_client.exceptions import BadRequestsError
    with pytest.raises(BadRequestsError) as refused:
        client.client.api_keys._(busy).stats.get(query_params={"start_date": today(), "aggregated_by": "year"})
    error = json.loads(refused.value.body)["errors"][0]
    assert error["field"] == "aggregated_by", error


@pytest.mark.skipif(not (CHROMIUM and DRIVER) and not os.environ.get("CI"),
                    reason="chromium and chromium-driver (scripts/test.sh installs them)")
def test_the_console_charts_a_keys_usage_and_sorts_keys_by_it(server, admin_token, traffic, browser):  # noqa: F811
    busy, idle = traffic
    sign_in(browser, server, admin_token)
    browser.get(url(server, f"/console/keys/{busy}"))
    bars = browser.find_elements(By.CSS_SELECTOR, "#usage-hours g.bar")
    assert len(bars) == 24, browser.page_source
    with_traffic = [bar for bar in bars if bar.get_attribute("data-total") != "0"]
    assert len(with_traffic) == 1, [bar.get_attribute("data-total") for bar in bars]
    assert with_traffic[0] == bars[-1], "the current hour, last"
    assert with_traffic[0].get_attribute("data-total") == "12"
    outcomes = [rect.get_attribute("data-outcome") for rect in with_traffic[0].find_elements(By.TAG_NAME, "rect")]
    assert outcomes == ["allowed", "insufficient_scope"], outcomes
    every_rect = browser.find_elements(By.CSS_SELECTOR, "#usage-hours rect")
    assert len(every_rect) == 2, "no bar but the current hour's has a part"
    days = browser.find_elements(By.CSS_SELECTOR, "#usage-days g.bar")
    assert len(days) == 30 and days[-1].get_attribute("data-total") == "12"
    # The same numbers as a table, for screen readers.
    cells = browser.find_elements(By.CSS_SELECTOR, "#usage-hours table.sr-only tbody tr")[-1].find_elements(By.TAG_NAME, "td")
    assert [cell.get_attribute("textContent") for cell in cells][1:] == ["12", "9", "3"]
    if os.environ.get("CONSOLE_SCREENSHOTS"):
        browser.execute_script("document.getElementById('usage').scrollIntoView()")
    shot(browser, "usage")

    # A key never used draws an empty chart, not an error.
    browser.get(url(server, f"/console/keys/{idle}"))
    assert "No decisions in this period." in browser.find_element(By.ID, "usage-hours").text
    browser.implicitly_wait(0)
    assert not browser.find_elements(By.CSS_SELECTOR, "#usage-hours rect")
    browser.implicitly_wait(5)

    browser.get(url(server, "/console/keys?account=acme"))
    click_and_load(browser, browser.find_element(By.ID, "sort-usage"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#keys tbody tr")
    assert rows[0].find_element(By.CSS_SELECTOR, "td.last-day").text == "12"
    assert busy in rows[0].text
    assert [row.find_element(By.CSS_SELECTOR, "td.last-day").text for row in rows[1:]] == ["0"] * (len(rows) - 1)

    browser.get(url(server, "/console/usage?account=acme"))
    top = browser.find_elements(By.CSS_SELECTOR, "#top-keys tbody tr")
    assert len(top) == 1 and busy in top[0].text and "12" in top[0].text, browser.page_source
