"""The web page in a real headless browser (Debian's chromium + chromium-driver, driven by
selenium): describe a task, get the adapter and its download link, run a prompt with and without
it side by side; an untrained checkpoint is labelled on the page. Loopback only."""

from __future__ import annotations

import io
import json
import re
import shutil
import tempfile
import urllib.request
import zipfile

import pytest

from hypergen import AdapterGenerator, EncoderConfig, build_conditioner
from service import create_app
from service.engine import Engine
from service.server import BackgroundServer
from tests.conftest import ENCODER, make_bottleneck_generator

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_S = 30


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium; install it with `apt-get install chromium chromium-driver` (make install)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="hypergen-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def serve(tmp_path):
    running = []

    def start(engine: Engine):
        app = create_app({"STORE": str(tmp_path / f"store{len(running)}")}, engine=engine)
        server = BackgroundServer(app, threads=8)
        running.append((app, server))
        return server.url

    yield start
    for app, server in running:
        server.stop()
        app.extensions["hypergen"].close()


def _wait(driver, condition):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(condition)


def test_page_makes_an_adapter_and_compares_outputs(browser, serve, checkpoint_dir):
    from selenium.webdriver.common.by import By

    url = serve(Engine.load(checkpoint_dir))
    browser.get(url + "/")
    find = lambda element_id: browser.find_element(By.ID, element_id)
    _wait(browser, lambda d: "checkpoint" in find("status").text)
    assert not find("untrained").is_displayed()
    assert "LoRA rank 4" in find("status").text
    assert not find("language-field").is_displayed(), "this checkpoint takes no language"

    find("description").send_keys("Translate English to French.")
    find("generate").click()
    _wait(browser, lambda d: re.fullmatch(r"[0-9a-f]{64}", find("adapter-id").text))
    adapter_id = find("adapter-id").text
    href = find("download").get_attribute("href")
    assert href.startswith(url) and href.endswith(f"/v1/adapters/{adapter_id}/download")
    with urllib.request.urlopen(href, timeout=WAIT_S) as response:  # what the link serves
        assert response.headers["Content-Type"] == "application/zip" and response.read(2) == b"PK"

    find("prompt").send_keys("The cat sits on the mat.")
    max_tokens = find("max-tokens")
    max_tokens.clear()
    max_tokens.send_keys("8")
    find("run").click()
    done = lambda d: all(
        find(i).get_attribute("data-state") == "done" for i in ("output-base", "output-adapter")
    )
    _wait(browser, done)
    assert not find("error").is_displayed()
    assert find("output-base").text != find("output-adapter").text, "the adapter changes the answer"
    assert find("download").text == "Download the PEFT LoRA adapter (zip)"


def test_page_sends_the_language_to_a_bottleneck_checkpoint_that_takes_one(
    browser, serve, llama, llama_dir, tmp_path
):
    """A description + language checkpoint of the bottleneck kind: the page shows the language
    field, sends it, shows the adapter's kind and language, links the AdapterHub zip."""
    from selenium.webdriver.common.by import By

    composite = EncoderConfig(
        kind="composite",
        parts={"description": ENCODER, "language": EncoderConfig(kind="language", name="geo")},
    )
    generator = make_bottleneck_generator(
        llama[0], llama_dir, build_conditioner(composite), encoder=composite
    )
    url = serve(Engine.load(generator.save_pretrained(tmp_path / "bottleneck-language")))
    browser.get(url + "/")
    find = lambda element_id: browser.find_element(By.ID, element_id)
    _wait(browser, lambda d: "checkpoint" in find("status").text)
    assert "bottleneck adapters of width 8 (pfeiffer, relu) after mlp" in find("status").text
    assert find("language-field").is_displayed()

    find("description").send_keys("Answer the riddle with one word.")
    find("generate").click()  # no language yet: the server's 400 names it
    _wait(browser, lambda d: find("error").is_displayed())
    assert "language" in find("error").text
    find("language").send_keys("fr")
    find("generate").click()
    _wait(browser, lambda d: re.fullmatch(r"[0-9a-f]{64}", find("adapter-id").text))
    assert not find("error").is_displayed()
    meta = find("adapter-meta").text
    assert "bottleneck m=8" in meta and "language fra" in meta
    assert find("download").text == "Download the AdapterHub bottleneck adapter (zip)"
    with urllib.request.urlopen(find("download").get_attribute("href"), timeout=WAIT_S) as r:
        archive = zipfile.ZipFile(io.BytesIO(r.read()))
    assert sorted(archive.namelist()) == ["adapter.safetensors", "adapter_config.json"]
    adapter_url = f"{url}/v1/adapters/{find('adapter-id').text}"
    with urllib.request.urlopen(adapter_url, timeout=WAIT_S) as r:
        record = json.load(r)
    assert record["condition"]["language"] == "fra" and record["adapter_kind"] == "bottleneck"


def test_page_labels_an_untrained_checkpoint(
    browser, serve, llama, llama_dir, conditioner, tmp_path
):
    from selenium.webdriver.common.by import By

    folder = AdapterGenerator.create(llama[0], llama_dir, conditioner, ENCODER).save_pretrained(
        tmp_path / "untrained"
    )
    url = serve(Engine.load(folder))
    browser.get(url + "/")
    banner = browser.find_element(By.ID, "untrained")
    _wait(browser, lambda d: banner.is_displayed())
    assert "UNTRAINED" in banner.text and "UNTRAINED" in browser.find_element(By.ID, "status").text


@pytest.mark.parametrize("condition", ["document", "description+examples"])
def test_page_offers_the_condition_the_checkpoint_takes(
    browser, serve, llama, llama_dir, tmp_path, condition
):
    """A document checkpoint gets a document field and no description; a description + examples
    one gets both, examples typed as "input => output" lines; the adapter made is the one the
    API makes for that condition."""
    from selenium.webdriver.common.by import By

    from tests.test_documents import DESCRIBED_DEMOS, DOCUMENT, _generator

    encoder = DOCUMENT if condition == "document" else DESCRIBED_DEMOS
    url = serve(Engine.load(_generator(llama, llama_dir, encoder).save_pretrained(tmp_path / "c")))
    browser.get(url + "/")
    find = lambda element_id: browser.find_element(By.ID, element_id)
    _wait(browser, lambda d: "checkpoint" in find("status").text)
    shown = {f: find(f"{f}-field").is_displayed() for f in ("description", "document", "examples")}
    assert shown == {
        "description": condition != "document",
        "document": condition == "document",
        "examples": condition != "document",
    }
    assert not find("language-field").is_displayed()

    if condition == "document":
        find("document").send_keys("Rifen Kelquonim was born in Helbrisel in 1931.")
        expected = {"document": "Rifen Kelquonim was born in Helbrisel in 1931."}
        assert find("condition-heading").text == "1. Give a document"
    else:
        find("description").send_keys("Add the numbers.")
        find("examples").send_keys("2 + 3")
        find("generate").click()  # a line without "=>": the page says so, nothing is sent
        _wait(browser, lambda d: find("error").is_displayed())
        assert 'example line 1 has no "=>"' in find("error").text
        find("examples").send_keys(" => 5\n10 + 4 => 14\n")
        expected = {
            "description": "Add the numbers.",
            "examples": [{"input": "2 + 3", "output": "5"}, {"input": "10 + 4", "output": "14"}],
        }
    find("generate").click()
    _wait(browser, lambda d: re.fullmatch(r"[0-9a-f]{64}", find("adapter-id").text))
    assert not find("error").is_displayed()
    request = urllib.request.Request(
        f"{url}/v1/adapters", data=json.dumps(expected).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=WAIT_S) as r:  # the same condition via the API
        assert json.load(r)["id"] == find("adapter-id").text
    made = "document of 46 characters" if condition == "document" else "from 2 examples"
    assert made in find("adapter-meta").text
