"""The report as a person sees it: report.html opened from disk in headless Chromium.

Two tiny digits runs (standard and FGSM adversarial training) go through the real command line
(train, evaluate, report); Chromium then loads the page from file:// with the network unused.
The full-page screenshot is saved under pytest's tmp dir (its path is printed) and, when the
environment variable ROBUSTLAB_SCREENSHOT names a file, copied there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
                       reason="needs Debian's chromium and chromium-driver"),
]


@pytest.fixture(scope="module")
def report_html(tmp_path_factory) -> Path:
    from click.testing import CliRunner

    from robustlab.cli import main
    from robustlab.runs import RunSpec, train_run
    from robustlab.training import TrainConfig

    root = tmp_path_factory.mktemp("browser")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest, and far faster than two on a busy machine
    try:
        runs = []
        for name, defense in (("standard", "clean"), ("fgsm-at", "fgsm-at")):
            spec = RunSpec(dataset="digits", model="small-cnn", model_options={"channels": [8, 16], "hidden": 32},
                           defense=defense, defense_options={"eps": 0.1} if defense != "clean" else {},
                           monitor={"attack": "pgd", "eps": 0.1, "steps": 10, "seed": 0})
            train_run(spec, root / name, TrainConfig(epochs=3, batch_size=64, lr=3e-3, progress=False, monitor_n=100), device="cpu")
            res = CliRunner().invoke(main, ["evaluate", str(root / name), "--attacks", "fgsm,pgd", "--steps", "10",
                                            "--eps", "0.05,0.1,0.2", "--n", "150", "--quiet", "--device", "cpu"])
            assert res.exit_code == 0, res.output
            runs.append(str(root / name))
        res = CliRunner().invoke(main, ["report", *runs, "--out", str(root / "report"), "--device", "cpu", "--n-examples", "6"])
        assert res.exit_code == 0, res.output
    finally:
        torch.set_num_threads(threads)
    path = Path(res.output.strip().splitlines()[-1])
    assert path == root / "report" / "report.html" and path.is_file()
    return path


@pytest.fixture()
def chromium(tmp_path, monkeypatch):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # belt and braces: both paths are given, so Selenium Manager never runs
    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingOptions", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_report_renders_in_chromium(report_html, chromium, tmp_path):
    d = chromium
    d.set_window_size(1280, 900)
    d.get(report_html.as_uri())
    assert d.execute_script("return document.readyState") == "complete"
    assert d.title.startswith("robustlab report")
    images = d.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.src.slice(0, 22)])")
    assert len(images) >= 16, images  # 2 comparison charts + 7 figures per run
    for complete, width, height, src in images:
        assert complete and width > 0 and height > 0 and src == "data:image/png;base64,"
    # nothing was fetched: no resources other than the page itself
    fetched = d.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert [u for u in fetched if not u.startswith("data:")] == []
    text = d.find_element("tag name", "body").text
    for heading in ("Summary", "Comparison", "Accuracy over epochs", "Adversarial examples", "Loss surface"):
        assert heading in text
    severe = [e for e in d.get_log("browser") if e.get("level") == "SEVERE"]
    assert severe == []
    # no horizontal overflow: the page fits the window width
    assert d.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")

    height = d.execute_script("return document.documentElement.scrollHeight")
    chrome = d.execute_script("return window.outerHeight - window.innerHeight")
    d.set_window_size(1280, min(height + chrome, 16000))
    shot = tmp_path / "report.png"
    assert d.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    print(f"report screenshot: {shot}")
    target = os.environ.get("ROBUSTLAB_SCREENSHOT")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
        print(f"copied to {target}")
