"""The search page in a real headless Chromium (Debian's ``chromium`` driven by Playwright): type a query and see
thumbnails, upload a picture and see texts, in a wide and a narrow window, with the keyboard only."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium browser on PATH (apt-get install chromium); the page's browser test needs it")


@pytest.fixture(scope="module")
def browser() -> Iterator:
    executable = _browser()
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright package is missing (pip install -e '.[dev]')"
    )
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.mark.parametrize(("name", "width"), [("wide", 1200), ("narrow", 380)])
def test_type_a_query_then_upload_a_picture(browser, live_server, shapes_run, tmp_path, name, width):
    page = browser.new_page(viewport={"width": width, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(live_server)
    page.wait_for_selector("#bundle option", state="attached")

    # text -> image: results appear as you type, with thumbnails, scores and class names
    page.fill("#q", "a large red circle")
    page.wait_for_selector("#grid li img")
    cards = page.locator("#grid li")
    assert cards.count() == 12
    first = cards.first.inner_text()
    assert "#1" in first and "score" in first
    assert page.locator("#grid li img").first.evaluate("img => img.complete && img.naturalWidth > 0")
    assert "encode" in page.inner_text("#status") and "ms" in page.inner_text("#status")
    page.screenshot(path=str(tmp_path / f"{name}_text.png"), full_page=True)
    if width < 600:  # narrow: one column of controls, no horizontal scrolling, results right under the search
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        first_card = page.locator("#grid li").first.bounding_box()
        upload = page.locator("#drop").bounding_box()
        assert first_card is not None and upload is not None and first_card["y"] < upload["y"]
        assert first_card["y"] < 900, "the first result starts below the fold"

    # image -> text: upload a dataset picture, see a list of captions
    picture = sorted((shapes_run.folder / "images").glob("*.png"))[0]
    page.set_input_files("#file", str(picture))
    page.wait_for_selector("#list li")
    assert page.locator("#list li").count() == 12 and page.is_hidden("#grid")
    assert page.locator("#preview").is_visible()
    page.screenshot(path=str(tmp_path / f"{name}_image.png"), full_page=True)
    assert (tmp_path / f"{name}_text.png").stat().st_size > 10_000
    assert not errors


def test_keyboard_dataset_item_and_readable_errors(browser, live_server, tmp_path):
    page = browser.new_page(viewport={"width": 900, "height": 900})
    page.goto(live_server)
    page.wait_for_selector("#examples button")
    # "/" focuses the search box; Enter searches
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "q"
    page.keyboard.type("two yellow triangles")
    page.keyboard.press("Enter")
    page.wait_for_selector("#grid li")
    # a dataset item as the query: hits say whether they share its class
    page.locator("#examples button").first.focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("#grid li .same, #grid li .other")
    assert page.is_visible("#query-classes") and "class" in page.inner_text("#query-classes")
    # an error from the server appears as a readable message
    page.fill("#k", "5")
    page.select_option("#metric", "hamming")
    page.select_option("#bundle", "texts")
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not a picture")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#error:not([hidden])")
    assert page.is_hidden("#grid") and page.is_hidden("#list")
    assert "not a readable image" in page.inner_text("#error")
    page.screenshot(path=str(tmp_path / "error.png"))
