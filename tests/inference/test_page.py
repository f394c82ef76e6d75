"""`serve --ui` in a real browser: Debian's headless Chromium, driven by Playwright, against a real server on a free
port. It uploads real test digits and reads the classes, probabilities and verdicts the page renders, which equal
the predict CLI's CSV and the checkpoint's "not sure" threshold; a file that is not an image gets the server's
sentence on the page. A screenshot of a phone-sized page is saved for a person to look at."""

import base64
import csv
import io
import json
import os
import shutil
from pathlib import Path

import preloaded
import pytest
from conftest import ROOT
from PIL import Image
from test_serve import call, serving

from tl_lightning.models.checkpoint import read_record
from tl_lightning.models.module import TransferClassifier

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def page_url(digits_run, tmp_path_factory):
    out, _ = digits_run
    log = tmp_path_factory.mktemp("ui") / "server.log"
    with serving(out / "checkpoints" / "model.ckpt", log, "--ui", "--top-k", "3") as (url, _):
        yield url


@pytest.fixture(scope="module")
def phone():
    """A phone-sized page in headless Chromium: the tests that need it skip where it is not installed (.ci/run
    installs it, so CI runs them)."""
    from playwright.sync_api import sync_playwright

    if CHROMIUM is None:
        pytest.skip("needs Debian's Chromium: apt-get install chromium (.ci/run installs it)")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser.new_page(viewport={"width": 390, "height": 844})
        browser.close()


def upload(page, path: Path) -> None:
    page.evaluate("document.getElementById('verdict').textContent = ''")
    page.set_input_files("#photo", str(path))
    page.wait_for_function(
        "(() => { const v = document.getElementById('verdict').textContent;"
        " return (v !== '' && v !== '…') || document.getElementById('error').style.display === 'block'; })()"
    )


@pytest.mark.slow
def test_the_page_shows_the_predict_clis_answers_and_says_when_it_is_not_sure(digits_run, page_url, phone, tmp_path):
    run = digits_run[0]
    checkpoint = run / "checkpoints" / "model.ckpt"
    threshold = read_record(checkpoint)["abstention"]["threshold"]
    test = Path(os.environ["TL_LIGHTNING_CACHE"]) / "digits-v1" / "test"
    files = [sorted((test / name).iterdir())[3] for name in sorted(os.listdir(test))]  # one per class
    predictions = tmp_path / "p.csv"
    cli = preloaded.run([preloaded.CONSOLE_SCRIPT, "predict", checkpoint, *files, "--out", predictions], ROOT)
    assert cli.returncode == 0, cli.stderr[-2000:]
    with open(predictions) as f:
        expected = {Path(row["path"]).name: row for row in csv.DictReader(f)}

    phone.goto(page_url + "/ui")
    phone.wait_for_function("document.getElementById('about').textContent.includes('10 classes')")
    for path in files:
        upload(phone, path)
        row = expected[path.name]
        shown = phone.eval_on_selector_all(
            "#classes .row", "rows => rows.map(r => [r.dataset.class, Number(r.dataset.probability)])"
        )
        assert len(shown) == 3 and shown[0][0] == row["class"], (path, shown, row)
        for name, probability in shown:  # the calibrated probabilities (one image a request here, ten a batch there)
            assert probability == pytest.approx(float(row[f"p_{name}"]), abs=1e-4)
        sure = float(row["probability"]) >= threshold
        verdict = phone.text_content("#verdict")
        assert verdict == (row["class"] if sure else "Not sure: take another photo"), (path, verdict, row)
        assert f"{100 * float(row['probability']):.1f}%" in phone.text_content("#classes")
        assert phone.is_visible("#gradcam") and phone.get_attribute("#gradcam", "src").startswith("data:image/png")
    metrics = json.loads((run / "metrics.json").read_text())
    own = f"right on {100 * metrics[f'test/acc_class/{shown[0][0]}']:.1f}% of its test images"
    assert own in phone.text_content("#classes .row")  # the class's own accuracy, on the split that chose nothing
    phone.screenshot(path=tmp_path / "page.png", full_page=True)
    shutil.copy(tmp_path / "page.png", Path(os.environ.get("TL_TEST_ARTIFACTS", tmp_path)) / "serve_ui.png")
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_a_file_that_is_not_an_image_gets_the_servers_sentence_on_the_page(page_url, phone, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    phone.goto(page_url + "/ui")
    upload(phone, notes)
    message = phone.text_content("#error")
    assert phone.is_visible("#error")
    assert message.startswith("'notes.txt' is not an image this model can read") and "Traceback" not in message
    assert phone.text_content("#classes") == ""


def test_the_page_is_served_only_when_asked_for(digits_run):
    from tl_lightning.inference.serve import server

    checkpoint = digits_run[0] / "checkpoints" / "model.ckpt"
    pages = [[route.path for route in server(checkpoint, ui=ui).app.routes] for ui in (False, True)]
    assert "/ui" not in pages[0] and "/ui" in pages[1]


def test_a_request_that_asks_for_it_gets_the_grad_cam_map_over_the_models_input(digits_run, page_url):
    path = sorted((Path(os.environ["TL_LIGHTNING_CACHE"]) / "digits-v1" / "test" / "7").iterdir())[0]
    image = base64.b64encode(path.read_bytes()).decode()

    def ask(**fields) -> tuple[int, dict]:
        return call(f"{page_url}/predict", json.dumps({"image": image, **fields}).encode(), "application/json")

    status, answer = ask(explain=True)
    assert status == 200, answer
    png = Image.open(io.BytesIO(base64.b64decode(answer["gradcam"].removeprefix("data:image/png;base64,"))))
    model = TransferClassifier.load_from_checkpoint(digits_run[0] / "checkpoints" / "model.ckpt", map_location="cpu")
    assert png.size == tuple(model.data_config["input_size"][1:]) and png.mode == "RGB"
    assert len(set(png.getdata())) > 50  # a coloured map over the digit, not a blank square
    status, plain = ask()
    assert status == 200 and "gradcam" not in plain and plain["class"] == answer["class"]
    status, refused = ask(explain="maybe")
    assert status == 400 and '"explain" must be true or false' in refused["error"]
