"""The dashboard in a real browser: Debian's headless Chromium driven by Selenium through chromium-driver.

Log in, see the failed message on the overview, open the failed list, retry it (a POST with the CSRF
token, no JavaScript), and see it queued; the audit trail names the operator. The second test does it
against the running daemon and private Postfix/Dovecot: the relay refuses with 550, the message fails,
the refusal is lifted, the operator retries in the browser and sees the message delivered.
"""

from __future__ import annotations

import asyncio
import re
import sys

from aiohttp import web

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from dropped import example, with_new_id
from gateway.crypto.pki import DEV_PARTIES
from gateway.ops.web import make_dashboard
from gateway.ops.web_accounts import add_account
from gateway.store import State
from mailservers import MailServers
from paths import ROOT
from ops_web_support import (PASSWORDS, bring_to, new_message, web_config, web_secrets, web_server,  # noqa: F401
                             web_setup, web_store, web_template)

sys.path.insert(0, str(ROOT / "tests" / "e2e"))  # the e2e helpers: a set-up wired to the mail servers, the daemon
from e2e_gateway import drop, make_setup, open_config, running, wait_for_states  # noqa: E402

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        options.add_argument(arg)
    options.add_argument("--blink-settings=scriptEnabled=false")  # the dashboard must work without JavaScript
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def arrive(driver: webdriver.Chrome, heading: str) -> None:
    """Until the page after a click (a form POST and its redirect) is shown: a click does not wait for it."""
    WebDriverWait(driver, 20, ignored_exceptions=[StaleElementReferenceException]).until(
        lambda d: d.find_element(By.TAG_NAME, "h1").text == heading)


def retry_in_browser(base: str, mid: str) -> dict[str, str]:
    seen: dict[str, str] = {}
    driver = browser()
    try:
        driver.set_page_load_timeout(20)
        driver.get(f"{base}/")
        assert driver.current_url.startswith(f"{base}/login"), driver.current_url
        driver.find_element(By.ID, "name").send_keys("olga")
        driver.find_element(By.ID, "password").send_keys(PASSWORDS["olga"])
        driver.find_element(By.ID, "login").click()
        arrive(driver, "Overview")
        seen["overview"] = driver.page_source
        driver.find_element(By.LINK_TEXT, "1 failed").click()
        arrive(driver, "Failed messages")
        row = driver.find_element(By.XPATH, f"//table[@id='failed']//tr[td/a[text()='{mid}']]")
        seen["failed_row"] = row.text
        row.find_element(By.ID, f"retry-{mid}").click()
        arrive(driver, f"Message {mid}")
        seen["flash"] = driver.find_element(By.ID, "flash").text
        seen["state"] = driver.find_element(By.ID, "fact-state").text
        seen["timeline"] = driver.find_element(By.ID, "timeline").text
        # back to the failed list: it is gone from there
        driver.find_element(By.LINK_TEXT, "Failed").click()
        arrive(driver, "Failed messages")
        seen["failed_after"] = driver.page_source
        seen["cookies"] = repr(driver.get_cookies())
    finally:
        driver.quit()
    return seen


async def test_log_in_find_a_failed_message_and_retry_it(web_server, web_store, web_config):
    mid = await new_message(web_store, web_config)
    await bring_to(web_store, mid, State.FAILED)
    other = await new_message(web_store, web_config)
    await bring_to(web_store, other, State.ACKNOWLEDGED)

    seen = await asyncio.to_thread(retry_in_browser, web_server, mid)

    assert "<script" not in seen["overview"] and not re.search(r"(src|href)=['\"]https?://", seen["overview"])
    assert "550 mailbox unknown" in seen["failed_row"]
    assert seen["flash"] == f"retry of {mid}: now queued"
    assert seen["state"] == "queued"
    assert "failed queued retry by olga" in seen["timeline"]
    assert mid not in seen["failed_after"]
    assert "'httpOnly': True" in seen["cookies"] and "'sameSite': 'Strict'" in seen["cookies"]
    record = await web_store.get(mid)
    assert record.state is State.QUEUED and record.next_attempt_at is not None
    actions = [(a["action"], a["object"], a["result"]) for a in await web_store.audit_rows(30)
               if a["actor"] == "olga"]
    assert ("dashboard.retry", mid, "queued") in actions
    assert ("dashboard.view", "failed", "ok") in actions and ("dashboard.login", "dashboard", "ok") in actions


def login_and_retry(driver: webdriver.Chrome, base: str, mid: str) -> dict[str, str]:
    seen = {}
    driver.set_page_load_timeout(20)
    driver.get(f"{base}/failed")
    driver.find_element(By.ID, "name").send_keys("olga")
    driver.find_element(By.ID, "password").send_keys(PASSWORDS["olga"])
    driver.find_element(By.ID, "login").click()  # back to where it was going: the failed list
    arrive(driver, "Failed messages")
    row = driver.find_element(By.XPATH, f"//table[@id='failed']//tr[td/a[text()='{mid}']]")
    seen["failed_row"] = row.text
    row.find_element(By.ID, f"retry-{mid}").click()
    arrive(driver, f"Message {mid}")
    seen["flash"] = driver.find_element(By.ID, "flash").text
    return seen


def message_state(driver: webdriver.Chrome, base: str, mid: str) -> tuple[str, str]:
    driver.get(f"{base}/messages/{mid}")
    arrive(driver, f"Message {mid}")
    return driver.find_element(By.ID, "fact-state").text, driver.find_element(By.ID, "timeline").text


async def test_retry_in_the_browser_gets_a_refused_message_delivered(tmp_path):
    passwords = {p.email: "pw-" + p.email.replace("@", "-at-") for p in DEV_PARTIES}
    gemeente = "nazorg@gemeente-0599.example.nl"
    with MailServers.temporary(passwords, sorted({a.split("@", 1)[1] for a in passwords})) as servers:
        cfg = open_config(make_setup(tmp_path / "gw", servers, passwords))
        add_account(cfg.dashboard.accounts_file, "olga", "operator", PASSWORDS["olga"])
        servers.refuse(gemeente, "550 5.7.1 Gemeente weigert (test)")
        async with running(cfg) as gateway:
            data, mid = with_new_id(example("01-meldingsbericht.xml"))
            drop(cfg.folders.outbox, f"{mid}.xml", data)
            await wait_for_states(gateway.store, [mid], [State.FAILED], timeout=30)
            servers.lift(gemeente)
            runner = web.AppRunner(make_dashboard(cfg, gateway.store, cfg.check_secrets(),
                                                  queued=gateway.dispatcher.wake), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            base = f"http://127.0.0.1:{runner.addresses[0][1]}"
            driver = await asyncio.to_thread(browser)
            try:
                seen = await asyncio.to_thread(login_and_retry, driver, base, mid)
                assert "550 5.7.1" in seen["failed_row"] and "Gemeente weigert (test)" in seen["failed_row"]
                assert re.fullmatch(rf"retry of {mid}: now (queued|sending|sent|delivered)", seen["flash"]), seen
                # Postfix delivers to the mailbox and its success DSN comes back over IMAP: delivered
                await wait_for_states(gateway.store, [mid], [State.DELIVERED], timeout=60)
                state, timeline = await asyncio.to_thread(message_state, driver, base, mid)
            finally:
                await asyncio.to_thread(driver.quit)
                await runner.cleanup()
        assert state == "delivered"
        assert "failed queued retry by olga" in timeline and "sent delivered" in timeline
        assert len(servers.messages(gemeente, folder=None)) == 1
