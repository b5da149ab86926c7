"""``04_explorer`` and ``03_results`` in a real JupyterLab, driven by headless Chromium (Playwright).

JupyterLab runs on a free localhost port without a token, on a folder holding a copy of a
notebook pointed at the test results folder. The explorer test runs all cells, waits for the
widgets, moves the threshold slider and checks the picture and the summary are redrawn without
any error output; the results test checks the altair figures are drawn by JupyterLab's own
Vega-Lite renderer (offline) and show a tooltip on hover. Screenshots are left in
``test-artifacts/``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pytest

pytest_plugins = ["fixtures_results"]
pytestmark = [pytest.mark.slow, pytest.mark.browser]

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "04_explorer.ipynb"
RESULTS_NOTEBOOK = REPO / "notebooks" / "03_results.ipynb"
ARTIFACT = REPO / "test-artifacts" / "explorer.png"
CHARTS_ARTIFACT = REPO / "test-artifacts" / "results-charts.png"
FAILURE_ARTIFACT = ARTIFACT.with_name("explorer-failure.png")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: JupyterLab user settings: start the notebook's kernel without asking, never fetch news.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker": {"autoStartDefaultKernel": True},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}
#: Seconds to wait for the server, the kernel and the widgets.
TIMEOUT = 60
#: Input prompts of a queued or running cell, and of an executed one.
STARTED, EXECUTED = re.compile(r"\[(\*|\d+)\]"), re.compile(r"\[\d+\]")


def chromium() -> str | None:
    """Path of a Chromium executable, or None."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    return found or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def lab(explorer_results: Path, tmp_path: Path) -> Iterator[str]:
    """URL of a JupyterLab serving a copy of ``04_explorer`` aimed at the results fixture."""
    with _serve(NOTEBOOK, explorer_results, tmp_path) as url:
        yield url


@pytest.fixture()
def results_lab(explorer_results: Path, tmp_path: Path) -> Iterator[str]:
    """URL of a JupyterLab serving a copy of ``03_results`` aimed at the results fixture."""
    with _serve(RESULTS_NOTEBOOK, explorer_results, tmp_path) as url:
        yield url


@contextmanager
def _serve(notebook: Path, results_dir: Path, tmp_path: Path) -> Iterator[str]:
    """Run JupyterLab on a copy of ``notebook`` with ``results_dir`` injected; yield the notebook's URL."""
    root, home = tmp_path / "lab", tmp_path / "home"
    root.mkdir()
    nb = nbformat.read(notebook, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(f"results_dir = {str(results_dir)!r}"))
    nbformat.write(nb, root / notebook.name)
    for name, values in LAB_SETTINGS.items():
        path = home / "settings" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
           "IPYTHONDIR": str(home / "ipython")}
    port = _free_port()
    log = (tmp_path / "lab.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", "--IdentityProvider.token=",
         "--ServerApp.password=", f"--ServerApp.root_dir={root}", "--LabApp.news_url=None"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited with {server.returncode}:\n{(tmp_path / 'lab.log').read_text()}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer in {TIMEOUT} s:\n{(tmp_path / 'lab.log').read_text()}")
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/lab/tree/{notebook.name}?reset"
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _run_all_cells(page) -> None:
    """Run → Run All Cells; again if the kernel was not ready to take them."""
    from playwright.sync_api import expect

    first_prompt = page.locator(".jp-CodeCell .jp-InputPrompt").first
    for _attempt in range(3):
        page.locator(".jp-Notebook .jp-Cell").first.click()  # the notebook is the current widget
        page.locator(".lm-MenuBar-item", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel").get_by_text("Run All Cells", exact=True).click()
        try:
            expect(first_prompt).to_have_text(STARTED, timeout=10_000)
            return
        except AssertionError:
            continue
    pytest.fail("JupyterLab did not start running the notebook's cells")


@contextmanager
def _notebook_page(url: str, failure_png: Path, requests: list[str] | None = None) -> Iterator:
    """A Chromium page on the notebook at ``url`` whose cells have all been started; a
    screenshot goes to ``failure_png`` when the body fails. ``requests`` collects every URL."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT * 1000)
    ARTIFACT.parent.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.set_default_timeout(TIMEOUT * 1000)
        if requests is not None:
            page.on("request", lambda request: requests.append(request.url))
        try:
            page.goto(url)
            page.wait_for_selector(".jp-Notebook .jp-Cell")
            expect(page.locator("#jp-main-statusbar")).to_contain_text("Idle")  # the kernel is up
            _run_all_cells(page)
            yield page
        except Exception:
            page.screenshot(path=str(failure_png))
            raise
        finally:
            browser.close()


@pytest.mark.skipif(chromium() is None, reason="no Chromium executable (chromium) found on this machine")
def test_explorer_notebook_renders_and_reacts_in_jupyterlab(lab: str) -> None:
    from playwright.sync_api import expect

    with _notebook_page(lab, FAILURE_ARTIFACT) as page:
        explorer = page.locator(".widget-vbox", has=page.locator(".widget-slider", has_text="threshold")).last
        picture = explorer.locator("img.widget-image").first
        summary = explorer.locator(".widget-html").last
        expect(picture).to_be_visible()
        expect(summary).to_contain_text("best IoU")
        expect(page.locator(".widget-slider", has_text="log10 range")).to_be_visible()
        # the last cell (the medians table) has run
        expect(page.locator(".jp-CodeCell .jp-InputPrompt").last).to_have_text(EXECUTED)
        before_src, before_text = picture.get_attribute("src"), summary.inner_text()

        slider = explorer.locator(".widget-slider", has_text="threshold")
        readout = slider.locator(".widget-readout")
        start = float(readout.inner_text())
        handle = slider.locator(".noUi-handle").first
        handle.scroll_into_view_if_needed()
        box = handle.bounding_box()
        assert box is not None
        y = box["y"] + box["height"] / 2
        page.mouse.move(box["x"] + box["width"] / 2, y)
        page.mouse.down()
        page.mouse.move(box["x"] + 120, y, steps=8)
        page.mouse.up()
        page.wait_for_function("([el, before]) => el.innerText !== before",
                               arg=[summary.element_handle(), before_text])
        page.wait_for_function("([el, before]) => el.getAttribute('src') !== before",
                               arg=[picture.element_handle(), before_src])
        moved = float(readout.inner_text())
        assert moved > start  # the handle went right
        expect(summary).to_contain_text(f"{moved:.3f}")

        errors = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
        texts = [errors.nth(i).inner_text() for i in range(errors.count())]
        assert not [t for t in texts if "Traceback" in t or "Error" in t], texts
        for message in ("Error displaying widget", "Error loading script"):
            assert page.get_by_text(message).count() == 0, message
        assert page.get_by_text("Loading widget...").count() == 0

        explorer.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACT))


@pytest.mark.skipif(chromium() is None, reason="no Chromium executable (chromium) found on this machine")
def test_results_charts_are_interactive_in_jupyterlab(results_lab: str) -> None:
    from playwright.sync_api import expect

    requests: list[str] = []
    with _notebook_page(results_lab, CHARTS_ARTIFACT.with_name("results-charts-failure.png"), requests) as page:
        expect(page.locator(".jp-CodeCell .jp-InputPrompt").last).to_have_text(EXECUTED)

        # every figure of the notebook, drawn by vega-embed as SVG (the PNG is only the fallback)
        charts = page.locator(".jp-OutputArea .vega-embed")
        expect(charts).to_have_count(7)  # Fig. 3 left/right, 4, 5 (medians, components), A3, A4
        for i in range(7):
            expect(charts.nth(i).locator("svg.marks")).to_be_visible()
        expect(page.locator('.jp-OutputArea-output[data-mime-type="image/png"]')).to_have_count(0)
        for message in ("Error displaying", "Javascript Error", "Error loading"):
            assert page.get_by_text(message).count() == 0, message

        # hovering a point of Fig. 3 (left) shows its tooltip: method, level, score, seeds, lr, runs
        point = charts.first.locator("g.mark-symbol path").first
        point.scroll_into_view_if_needed()
        point.hover()
        tooltip = page.locator("#vg-tooltip-element")
        expect(tooltip).to_have_class(re.compile(r"\bvisible\b"))
        for field in ("Method", "level", "maxboxacc_v2", "n_seeds", "lr", "runs"):
            expect(tooltip).to_contain_text(field)
        expect(tooltip).to_contain_text("CAM")
        page.screenshot(path=str(CHARTS_ARTIFACT))
        assert all(url.startswith("http://127.0.0.1") or url.startswith("data:") for url in requests), \
            [url for url in requests if not url.startswith("http://127.0.0.1")]
