"""The search page in a real browser: headless Chromium (the system binary, driven by
Playwright) against a real `clipdex serve` process over a tiny-model index with a saved
classification run. `.ci/run` installs chromium when it is missing."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import TINY, make_images, run_cli

pytestmark = pytest.mark.slow

CHROMIUM = next(
    (
        found
        for name in ("chromium", "chromium-browser", "google-chrome")
        if (found := shutil.which(name))
    ),
    None,
)
TOKEN = "page-test-token-0123456789"
LABELS = "cat,dog,bird,fish,tree,car"
#: A file name that is also HTML: the page must show it as text and never parse it.
HOSTILE = "<img src=x onerror=document.title='pwned'>.png"
WAIT_MS = 15_000


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A `clipdex serve` subprocess on a free 127.0.0.1 port; yields its base URL and facts."""
    root = tmp_path_factory.mktemp("served")
    photos = root / "photos"
    make_images(photos, 30, seed=3)
    Image.new("RGB", (40, 30), (200, 30, 30)).save(photos / HOSTILE)
    index = root / "index"
    runner = CliRunner()
    run_cli(runner, "index", str(photos), "--index", str(index), *TINY)
    out = root / "labels.json"
    run_cli(
        runner,
        "classify",
        "--labels",
        LABELS,
        "--templates",
        "none",
        "--index",
        str(index),
        "--out",
        str(out),
    )
    labelled = json.loads(out.read_text())
    token_file = root / "token.txt"
    token_file.write_text(TOKEN + "\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), HF_HUB_OFFLINE="1")
    log = (root / "server.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clipdex",
            "serve",
            "--index",
            str(index),
            "--port",
            str(port),
            "--token-file",
            str(token_file),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, (root / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                assert time.monotonic() < deadline, "the server was not ready within 90 s"
                time.sleep(0.2)
        yield {"base": base, "photos": photos, "labelled": labelled}
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium binary on PATH (apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    """A fresh page; fails the test if the page threw a JavaScript error or broke the
    server's Content-Security-Policy."""
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "console",
        lambda message: "Content Security Policy" in message.text and errors.append(message.text),
    )
    yield page
    context.close()
    assert errors == [], errors


def api(served, path: str, **params) -> dict | list:
    query = urllib.parse.urlencode({**params, "token": TOKEN})
    with urllib.request.urlopen(f"{served['base']}{path}?{query}", timeout=30) as response:
        return json.loads(response.read())


def open_page(page, served, **params) -> None:
    page.goto(served["base"] + "/?" + urllib.parse.urlencode({**params, "token": TOKEN}))


def search(page, text: str) -> None:
    page.fill("#q", text)
    page.press("#q", "Enter")
    settle(page)


def settle(page) -> None:
    """Wait until the page has answered its latest request."""
    page.wait_for_function("() => ['done', 'error'].includes(document.body.dataset.state)")


def shown_uris(page) -> list[str]:
    return page.eval_on_selector_all(".tile", "tiles => tiles.map(t => t.title)")


def expected_uris(served, **params) -> list[str]:
    return [row["uri"] for row in api(served, "/api/v1/search", **params)["results"]]


def test_a_text_query_shows_its_results_with_loaded_thumbnails(page, served):
    total = len(served["labelled"])
    open_page(page, served, k=10)
    page.wait_for_function(f"() => document.getElementById('q').placeholder.includes('{total}')")
    assert page.get_attribute("#q", "placeholder") == f"Search {total} images by text"
    search(page, "a red square")
    assert "q=a+red+square" in page.url
    # pages of 10 follow one another while the end of the grid is near the view
    page.wait_for_function(
        f"() => document.querySelectorAll('.tile').length === {total}"
        " && document.body.dataset.state === 'done'"
    )
    assert shown_uris(page) == expected_uris(served, q="a red square", k=total)
    assert page.is_hidden("#more")
    assert page.text_content("#summary") == f"{total} results for \u201ca red square\u201d"
    best = api(served, "/api/v1/search", q="a red square", k=1)["results"][0]["score"]
    assert page.text_content(".tile .score") == f"{best:.3f}"
    # thumbnails load lazily, as they come near the view: many results stay cheap
    assert page.eval_on_selector_all(".tile img", "imgs => imgs.every(i => i.loading === 'lazy')")
    # every thumbnail is fetched (with the token) and decodes to a real image
    page.evaluate("() => window.scrollTo(0, document.body.scrollHeight)")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.tile img')]"
        ".every(img => img.complete && img.naturalWidth > 0)"
    )


def test_the_page_says_the_model_is_loading_and_searches_once_ready(page, served):
    ready = {"now": False}

    def readyz(route):
        if ready["now"]:
            route.continue_()
        else:
            route.fulfill(status=503, content_type="application/json", body='{"detail": "loading"}')

    page.route("**/readyz", readyz)
    searches: list[str] = []
    page.on("request", lambda request: "/api/v1/search" in request.url and searches.append(1))
    open_page(page, served, q="a red square")
    page.wait_for_selector("#ready:not([hidden])")
    assert "Loading the model" in page.text_content("#ready")
    page.wait_for_timeout(300)
    assert searches == []  # the query waits for the model
    assert shown_uris(page) == []
    ready["now"] = True
    page.wait_for_selector("#ready", state="hidden")
    settle(page)
    assert shown_uris(page) == expected_uris(served, q="a red square", k=60)


def test_a_result_opens_large_with_its_details_and_more_like_this(page, served):
    open_page(page, served)
    search(page, "a blue circle")
    before = shown_uris(page)
    page.click(".tile >> nth=1")
    page.wait_for_selector("#detail[open] #detail-meta dd")
    uri = before[1]
    assert page.text_content("#detail-title") == uri
    meta = page.text_content("#detail-meta")
    assert f"{Path(uri).stat().st_size / 1024:.1f} KB" in meta or "bytes" in meta
    label = next(row["label"] for row in served["labelled"] if row["uri"] == uri)
    assert label in page.text_content("#detail-labels tbody")
    page.wait_for_function("() => document.getElementById('detail-img').naturalWidth > 0")
    image_id = page.get_attribute(".tile >> nth=1", "data-id")

    page.click("#like")
    settle(page)
    assert f"like={image_id}" in page.url
    similar = shown_uris(page)
    assert similar == expected_uris(served, like=image_id, k=60)
    assert uri not in similar  # the image itself is left out

    page.go_back()
    page.wait_for_function(
        "() => new URLSearchParams(location.search).get('q') === 'a blue circle'"
    )
    settle(page)
    assert shown_uris(page) == before
    assert page.input_value("#q") == "a blue circle"
    page.go_forward()
    page.wait_for_function(
        f"() => new URLSearchParams(location.search).get('like') === '{image_id}'"
    )
    settle(page)
    assert shown_uris(page) == similar


def test_the_label_filter_shows_only_images_with_that_label(page, served):
    counts: dict[str, int] = {}
    for row in served["labelled"]:
        counts[row["label"]] = counts.get(row["label"], 0) + 1
    label = min(counts, key=counts.get)  # the rarest label, so filtering must drop images
    assert counts[label] < len(served["labelled"])
    open_page(page, served)
    search(page, "anything")
    assert len(shown_uris(page)) == len(served["labelled"])
    option = page.locator(f"#label option[value='{label}']")
    assert option.text_content() == f"{label} ({counts[label]})"  # counts from /api/v1/runs
    page.select_option("#label", label)
    page.wait_for_function(
        f"() => new URLSearchParams(location.search).get('label') === '{label}'"
        " && document.body.dataset.state === 'done'"
    )
    wanted = {row["uri"] for row in served["labelled"] if row["label"] == label}
    assert set(shown_uris(page)) == wanted
    page.go_back()
    settle(page)
    assert page.input_value("#label") == ""
    assert len(shown_uris(page)) == len(served["labelled"])


def drop_file(page, path: Path) -> None:
    """Drop a file on the page as a user dragging it from a file manager would."""
    page.evaluate(
        """([name, data]) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: "image/png" }));
            for (const type of ["dragenter", "dragover", "drop"]) {
                document.body.dispatchEvent(
                    new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true })
                );
            }
        }""",
        [path.name, base64.b64encode(path.read_bytes()).decode()],
    )


def test_an_uploaded_or_dropped_image_finds_itself_first_and_back_restores(page, served):
    open_page(page, served)
    search(page, "a green triangle")
    before = shown_uris(page)
    page.fill("#q", "")  # the image alone (with text in the box, both are searched)
    picked, dropped = sorted(served["photos"].glob("img*.png"))[2:4]
    page.set_input_files("#image-input", str(picked))
    page.wait_for_function("() => new URLSearchParams(location.search).get('image') === '1'")
    settle(page)
    by_picked = shown_uris(page)
    assert by_picked[0] == str(picked)
    assert page.text_content(".tile .score") == "1.000"
    assert page.is_visible("#image-chip")
    assert page.text_content("#image-chip-name") == picked.name

    drop_file(page, dropped)
    page.wait_for_function(
        f"() => document.querySelector('.tile')?.title.endsWith('{dropped.name}')"
    )
    settle(page)
    assert page.is_hidden("#drop")
    assert page.text_content("#image-chip-name") == dropped.name

    page.go_back()  # the picked image's results, from the image kept in memory
    page.wait_for_function(
        f"() => document.querySelector('.tile')?.title.endsWith('{picked.name}')"
    )
    settle(page)
    assert shown_uris(page) == by_picked
    page.go_back()
    page.wait_for_function("() => !new URLSearchParams(location.search).has('image')")
    settle(page)
    assert shown_uris(page) == before
    assert page.is_hidden("#image-chip")


def test_the_page_fits_a_phone(browser, served):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    try:
        open_page(page, served, q="a blue circle")
        settle(page)
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
        boxes = [page.locator(".tile").nth(i).bounding_box() for i in range(4)]
        assert len({box["y"] for box in boxes[:3]}) == 1  # three results side by side
        assert all(box["width"] >= 90 for box in boxes)
        page.locator(".tile").first.click()
        page.wait_for_selector("#detail[open] #detail-meta dd")
        dialog = page.locator("#detail").bounding_box()
        assert dialog["x"] >= 0 and dialog["x"] + dialog["width"] <= 390
        assert page.locator("#like").is_visible()
    finally:
        context.close()


def test_the_keyboard_moves_opens_and_closes(page, served):
    open_page(page, served, q="a white star")
    settle(page)
    page.focus(".tile >> nth=0")
    page.keyboard.press("ArrowRight")
    second = page.get_attribute(".tile >> nth=1", "data-id")
    assert page.evaluate("document.activeElement.dataset.id") == second
    page.keyboard.press("Enter")
    page.wait_for_selector("#detail[open]")
    page.keyboard.press("Escape")
    page.wait_for_selector("#detail", state="hidden")
    assert page.evaluate("document.activeElement.dataset.id") == second  # focus comes back
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "q"


def test_uris_are_shown_as_text_never_as_html(page, served):
    hostile = str(served["photos"] / HOSTILE)
    open_page(page, served, q="red")
    settle(page)
    tile = page.locator(f".tile[title={json.dumps(hostile)}]")
    assert tile.count() == 1
    tile.click()
    page.wait_for_selector("#detail[open] #detail-meta dd")
    assert page.text_content("#detail-title") == hostile
    assert page.locator("img[src='x']").count() == 0
    assert page.title() != "pwned"


def test_errors_and_empty_results_are_said_plainly(page, served):
    open_page(page, served, q="red", min_score="0.9999")
    settle(page)
    assert shown_uris(page) == []
    assert page.is_visible("#empty")
    assert "No images match" in page.text_content("#empty")

    open_page(page, served, q="red", min_score="not-a-number")
    settle(page)
    assert page.is_visible("#error")
    assert "min_score" in page.text_content("#error")

    # an empty index says how to fill it (its status, as the server would give it)
    page.route(
        "**/api/v1/status*",
        lambda route: route.fulfill(content_type="application/json", body='{"images": 0}'),
    )
    open_page(page, served)
    page.wait_for_selector("#empty:not([hidden])")
    assert "no images yet: run clipdex index FOLDER" in page.text_content("#empty")
    page.unroute("**/api/v1/status*")

    page.goto(served["base"] + "/?q=red")  # no token: the page says how to give one
    settle(page)
    assert "token" in page.text_content("#error")
