"""The dashboard in a real headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium) during a real batch: worker rows appear, counts move, a killed worker is marked lost.
Screenshots go to build/ (dashboard-mid-batch.png, dashboard-worker-lost.png)."""

import shutil
import signal
import time
from pathlib import Path

import pytest

from procs import (free_port, master_port, read_results, summary, unavailable, wait_until,
                   write_tasks)

pytestmark = pytest.mark.browser

BUILD = Path(__file__).resolve().parents[2] / "build"
WORKERS = ("w-1", "w-2", "w-3")


@pytest.fixture
def browser():
    """A headless Chromium through chromedriver, both Debian's; closed at teardown."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        unavailable("Debian's chromium and chromium-driver are not installed "
                    "(apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium is not installed in this venv (make venv installs it)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1100", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def workers_on_page(driver) -> dict[str, dict]:
    """The worker table as the page shows it: id -> {state, ok, row class}."""
    rows = driver.execute_script("""
        return [...document.querySelectorAll('#workers tbody tr')].map(tr => ({
            id: tr.dataset.id, cls: tr.className,
            state: tr.querySelector('td.state').textContent,
            ok: Number(tr.querySelector('td.ok').textContent)}));""")
    return {row["id"]: row for row in rows}


def finished_on_page(driver) -> int:
    return int(driver.find_element("id", "fig-finished").text.split("/")[0])


def test_dashboard_follows_a_real_batch_in_chromium(spawn, browser, tmp_path):
    n, web = 300, free_port()
    # every 30th task fails, with its number in the error the page must show
    tasks = write_tasks(tmp_path / "tasks.jsonl", [
        {"id": f"t{i}", "task": "fail", "args": [f"kaput {i}"]} if i % 30 == 29 else
        {"id": f"t{i}", "task": "sleep", "args": [0.1, i]} for i in range(n)])
    out = tmp_path / "results.jsonl"
    master = spawn("master", "--tasks", tasks, "--bind", "127.0.0.1:0",
                   "--metrics", web, "--wait-workers", len(WORKERS), "--lease-timeout", "1.5",
                   "--results", out, "--timeout", "120")
    address = f"127.0.0.1:{master_port(master)}"
    browser.get(f"http://127.0.0.1:{web}/")
    workers = {name: spawn("worker", "--master", address, "--id", name) for name in WORKERS}

    first = wait_until(lambda: (lambda rows: rows if set(rows) == set(WORKERS)
                                and sum(r["ok"] for r in rows.values()) > 0 else None)(
        workers_on_page(browser)), 30, "three worker rows with results on the page")
    done_before = finished_on_page(browser)
    assert browser.find_element("id", "connection").text == "live"
    wait_until(lambda: finished_on_page(browser) >= done_before + 10, 30,
               "the page's done count to move")
    later = workers_on_page(browser)
    assert all(later[name]["ok"] >= first[name]["ok"] for name in WORKERS)
    assert sum(r["ok"] for r in later.values()) > sum(r["ok"] for r in first.values())
    assert all(row["state"] in ("working", "idle") for row in later.values())
    failure = wait_until(lambda: browser.find_elements("css selector", "#failures li pre"), 30,
                         "a failure on the page")[0].text
    assert failure.startswith("RuntimeError: kaput ") and "Traceback" in failure
    BUILD.mkdir(exist_ok=True)
    browser.save_screenshot(str(BUILD / "dashboard-mid-batch.png"))

    workers["w-3"].signal(signal.SIGKILL)
    killed_at = time.monotonic()
    wait_until(lambda: workers_on_page(browser)["w-3"]["cls"] == "lost", 15,
               "the killed worker's row to be marked lost")
    marked_after = time.monotonic() - killed_at
    assert workers_on_page(browser)["w-3"]["state"] == "lost"
    browser.save_screenshot(str(BUILD / "dashboard-worker-lost.png"))

    assert master.wait(120) == 1, master.stderr          # some failed, on purpose
    results = read_results(out)
    assert sorted(r["id"] for r in results) == sorted(f"t{i}" for i in range(n))
    failed = n // 30
    assert sum(r["status"] == "failed" for r in results) == failed
    stats = summary(master)
    assert set(stats["per_worker"]) == set(WORKERS)
    assert sum(w["ok"] for w in stats["per_worker"].values()) == n - failed
    assert sum(w["failed"] for w in stats["per_worker"].values()) == failed
    assert stats["workers_lost"] == 1
    # the master is gone: the page says so instead of freezing on the last figures
    wait_until(lambda: browser.find_element("id", "connection").text == "master not answering",
               10, "the page to notice the master is gone")
    print(f"\nkilled worker marked lost on the page {marked_after:.1f} s after SIGKILL "
          f"(lease timeout 1.5 s); per worker: {stats['per_worker']}")
