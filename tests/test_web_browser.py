"""The chat page (examples/web_chat) in a real browser: headless Chromium, driven by selenium,
on the app of ``rxagent web`` (the offline demo model behind the real OpenAIProvider)."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rxagent.web import ServerThread
from rxagent.web.demo import demo_app
from tests.web_support import require

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 20  # seconds, at most, for anything the page should show

#: Records what the assistant's first text showed at each change, and every progress note.
RECORDER = """
window.seen = {texts: [], progress: []};
new MutationObserver(() => {
  const text = document.querySelector('.msg.assistant.text');
  if (text && text.textContent) window.seen.texts.push(text.textContent);
  for (const p of document.querySelectorAll('.tool .progress')) {
    if (p.textContent) window.seen.progress.push(p.textContent);
  }
}).observe(document.getElementById('transcript'),
           {subtree: true, childList: true, characterData: true});
"""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    require("chromium", Path(CHROMIUM).exists() and shutil.which(CHROMIUM) is not None)
    require("chromedriver", Path(CHROMEDRIVER).exists())
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_chat_page_streams_a_run_takes_an_approval_and_shows_it_in_two_windows(
    browser: Any,
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    def wait_for(driver: Any, condition: Any) -> Any:
        return WebDriverWait(driver, WAIT).until(condition)

    def css(selector: str) -> tuple[str, str]:
        return (By.CSS_SELECTOR, selector)

    with ServerThread(demo_app(pace=0.3)) as server:
        browser.get(server.url + "/")
        wait_for(browser, ec.element_to_be_clickable(css("#send")))
        browser.execute_script(RECORDER)
        browser.find_element(By.ID, "prompt").send_keys("Tell me about ReactiveX.")
        browser.find_element(By.ID, "send").click()

        # A tool row appears, shows its progress, and completes; the calculator waits.
        wait_for(browser, ec.presence_of_element_located(css('.tool[data-status="completed"]')))
        pending = wait_for(
            browser, ec.element_to_be_clickable(css('.tool[data-status="pending"] button.approve'))
        )
        assert browser.find_element(By.ID, "status").text == "paused"
        row = browser.find_element(By.CSS_SELECTOR, '.tool[data-status="pending"]')
        assert row.find_element(By.CSS_SELECTOR, ".name").text == "calculate"
        assert "waiting for approval" in row.text
        lookup = browser.find_element(
            By.XPATH, "//div[contains(@class,'tool')][.//span[text()='lookup']]"
        )
        assert lookup.get_attribute("data-status") == "completed"
        assert "ReactiveX is an API" in lookup.find_element(By.CSS_SELECTOR, ".result").text

        # The text streamed in: the page showed it growing, piece by piece.
        seen = browser.execute_script("return window.seen")
        texts = list(dict.fromkeys(seen["texts"]))
        assert len(texts) >= 3, texts
        assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))
        assert texts[-1].startswith("I'll look that up")
        assert any('"stage"' in p for p in seen["progress"])  # the slow tool's progress

        # A second window on the same run, opened while it waits.
        first = browser.current_window_handle
        url = browser.current_url
        assert "#run=" in url
        browser.switch_to.new_window("window")
        second = browser.current_window_handle
        browser.get(url)
        wait_for(
            browser, ec.element_to_be_clickable(css('.tool[data-status="pending"] button.approve'))
        )

        # Approve in the first window, with edited arguments: both go on live to the answer.
        browser.switch_to.window(first)
        row = browser.find_element(By.CSS_SELECTOR, '.tool[data-status="pending"]')
        row.find_element(By.CSS_SELECTOR, "button.edit").click()
        editor = row.find_element(By.CSS_SELECTOR, "textarea.edited")
        editor.clear()
        editor.send_keys('{"expression": "6 * 7"}')
        pending.click()
        for handle in (first, second):
            browser.switch_to.window(handle)
            wait_for(browser, ec.text_to_be_present_in_element(css("#status"), "completed"))
        transcripts = []
        for handle in (first, second):
            browser.switch_to.window(handle)
            calculate = browser.find_element(
                By.XPATH, "//div[contains(@class,'tool')][.//span[text()='calculate']]"
            )
            assert calculate.get_attribute("data-status") == "completed"
            assert calculate.find_element(By.CSS_SELECTOR, ".result").text == "42"
            assert calculate.find_elements(By.CSS_SELECTOR, "button.approve") == []
            transcripts.append(browser.find_element(By.ID, "transcript").text)
            assert "tokens" in browser.find_element(By.ID, "usage").text
        assert transcripts[0] == transcripts[1]
        assert "17 * 23 + 4 = 42." in transcripts[0]  # the demo model reads the edited result
        assert "Tell me about ReactiveX." in transcripts[0]

        # A follow-up continues the conversation in a new run.
        browser.switch_to.window(first)
        browser.find_element(By.ID, "prompt").send_keys("Thanks! And now?")
        browser.find_element(By.ID, "send").click()
        wait_for(browser, lambda d: d.current_url != url)
        wait_for(browser, ec.text_to_be_present_in_element(css("#status"), "completed"))
        transcript = browser.find_element(By.ID, "transcript").text
        earlier, later = transcript.split("Thanks! And now?")
        assert "Tell me about ReactiveX." in earlier and "17 * 23 + 4 = 42." in later

        # Cancel a run that waits for a decision: its waiting call is dropped.
        browser.find_element(By.ID, "new").click()
        browser.find_element(By.ID, "prompt").send_keys("Once more.")
        browser.find_element(By.ID, "send").click()
        wait_for(browser, ec.element_to_be_clickable(css('.tool[data-status="pending"] .approve')))
        browser.find_element(By.ID, "cancel").click()
        wait_for(browser, ec.text_to_be_present_in_element(css("#status"), "cancelled"))
        calculate = browser.find_element(
            By.XPATH, "//div[contains(@class,'tool')][.//span[text()='calculate']]"
        )
        assert calculate.get_attribute("data-status") == "cancelled"
        assert calculate.find_elements(By.CSS_SELECTOR, "button") == []
