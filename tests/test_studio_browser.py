"""The Studio in a real browser: Playwright for Python driving the system Chromium (Debian's
`chromium`; skipped when it or Playwright is absent) against a real server on 127.0.0.1.  One walk
through the page as a user would: create a project, add a text, train a tokenizer, prepare token
files, start a tiny run, watch chart points arrive, stop it, see its checkpoint, resume it, chat
with it and watch the tokens stream, save a memory.  Screenshots of every tab go to tests/artifacts/."""
import os
import shutil
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("sse_starlette")
sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no system Chromium (apt-get install chromium chromium-driver)", allow_module_level=True)

import uvicorn  # noqa: E402
from studio_util import VOCAB, corpus  # noqa: E402

from bitttt.studio.app import create_app  # noqa: E402

ARTIFACTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "artifacts")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("studio-projects")
    app = create_app(str(root))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    t0 = time.monotonic()
    while not srv.started and time.monotonic() - t0 < 20:
        time.sleep(0.05)
    assert srv.started
    yield f"http://127.0.0.1:{port}/", str(root), app.state.studio
    studio = app.state.studio
    for key in list(studio.runs._procs):  # never leave a training behind
        try:
            studio.runs.kill(studio.projects.get(key[0]), key[1])
        except Exception:
            pass
    srv.should_exit = True
    th.join(10)


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        except Exception as e:  # a Chromium that cannot start here (no display libraries, ...)
            pytest.skip(f"system Chromium does not start: {e}")
        pg = browser.new_page(viewport={"width": 1366, "height": 900})
        pg.errors = []
        pg.on("pageerror", lambda e: pg.errors.append(str(e)))
        pg.set_default_timeout(30000)
        sync_api.expect.set_options(timeout=30000)  # a shared 2-core machine can be slow
        yield pg
        browser.close()


def points(pg, chart: str) -> int:
    return int(pg.eval_on_selector(f"#{chart} svg", "s => s.dataset.points"))


def test_click_through_the_studio(server, page, tmp_path):
    url, root, studio = server
    pg = page
    os.makedirs(ARTIFACTS, exist_ok=True)
    pg.goto(url)
    sync_api.expect(pg.locator("#no-project")).to_be_visible()

    # -- a project -------------------------------------------------------------------------------
    pg.fill("#project-new", "demo")
    pg.click("#project-create")
    sync_api.expect(pg.locator("#project-select")).to_have_value("demo")
    assert os.path.isdir(os.path.join(root, "demo", "raw"))

    # -- Data: a text (a bad one refused first), a tokenizer, token files --------------------------------------
    pg.set_input_files("#upload", files=[{"name": "latin1.txt", "mimeType": "text/plain",
                                          "buffer": "café".encode("latin-1")}])
    pg.click("#upload-go")
    sync_api.expect(pg.locator("#raw-msg")).to_contain_text("invalid UTF-8 at byte offset 3")
    pg.set_input_files("#upload", files=[{"name": "story.txt", "mimeType": "text/plain",
                                          "buffer": corpus().encode()}])
    pg.click("#upload-go")
    sync_api.expect(pg.locator("#raw-table tbody tr")).to_have_count(1)
    sync_api.expect(pg.locator("#raw-table tbody")).to_contain_text("story.txt")
    sync_api.expect(pg.locator("#preview")).to_contain_text(corpus()[:60])
    assert os.listdir(os.path.join(root, "demo", "raw")) == ["story.txt"]

    pg.fill("#tok-vocab", "100000")
    pg.click("#tok-train")
    sync_api.expect(pg.locator("#tok-msg")).to_contain_text("vocab_size=100000 is too large for this corpus")
    pg.fill("#tok-vocab", str(VOCAB))
    pg.click("#tok-train")
    sync_api.expect(pg.locator("#tok-msg")).to_contain_text(f"trained tok: {VOCAB} pieces")
    assert pg.locator("#tok-sample span").count() > 20
    sync_api.expect(pg.locator("#tok-stats")).to_contain_text("bytes per token")

    pg.fill("#ds-val", "0.25")
    pg.click("#ds-prepare")
    sync_api.expect(pg.locator("#ds-msg")).to_contain_text("training tokens")
    sync_api.expect(pg.locator("#ds-table tbody")).to_contain_text("main")

    # -- Train: a tiny run, its command, its estimate, live charts, a refused second run, stop ----------------------
    pg.click("nav button[data-tab=train]")
    pg.click("#presets button[data-preset=tiny]")
    for key, v in {"model.hidden_size": 32, "model.num_layers": 1, "model.num_heads": 2,
                   "model.intermediate_size": 64, "batch_size": 2, "seq_len": 32, "max_steps": 100000,
                   "max_time": 120, "log_interval": 1, "eval_interval": 10, "eval_batches": 1,
                   "ckpt_interval": 20}.items():
        pg.fill(f'[data-key="{key}"]', str(v))
    sync_api.expect(pg.locator("#run-command")).to_contain_text("model.hidden_size=32")
    sync_api.expect(pg.locator("#run-command")).to_contain_text("cd " + os.path.join(root, "demo"))
    pg.fill("#run-name", "run 1")
    sync_api.expect(pg.locator("#run-command")).to_contain_text("run name must be a plain name")
    pg.fill("#run-name", "run1")
    sync_api.expect(pg.locator("#run-command")).to_contain_text("name=run1")
    pg.click("#run-estimate")
    sync_api.expect(pg.locator("#estimate-out")).to_contain_text("ms per step", timeout=60000)
    sync_api.expect(pg.locator("#estimate-out")).to_contain_text("peak RAM")
    pg.click("#run-start")
    sync_api.expect(pg.locator("#live-state")).to_have_text("running")
    pg.wait_for_function("document.querySelector('#chart-loss svg').dataset.points > 4")
    n1 = points(pg, "chart-loss")
    pg.wait_for_function(f"document.querySelector('#chart-loss svg').dataset.points > {n1 + 4}")
    assert points(pg, "chart-lr") > 4 and points(pg, "chart-tps") > 4 and points(pg, "chart-ram") > 4
    pg.fill("#run-name", "run2")
    pg.click("#run-start")
    sync_api.expect(pg.locator("#run-msg")).to_contain_text("project demo is busy: run run1 is training")
    assert not os.path.exists(os.path.join(root, "demo", "runs", "run2"))
    sync_api.expect(pg.locator("#run-sample")).to_contain_text("step", timeout=30000)  # a sample at an evaluation
    pg.click("#run-stop")
    sync_api.expect(pg.locator("#live-state")).to_have_text("stopped", timeout=30000)
    stopped_at = studio.runs.status(studio.projects.get("demo"), "run1")["step"]
    assert stopped_at > 0

    # -- Runs: the checkpoint, resume from it -------------------------------------------------------------------
    pg.click("nav button[data-tab=runs]")
    row = pg.locator('#runs-table tbody tr[data-run="run1"]')
    sync_api.expect(row).to_contain_text("stopped")
    ck = f"step_{stopped_at:07d}.safetensors"
    sync_api.expect(pg.locator(f'#ckpt-table tr[data-ckpt="{ck}"]')).to_be_visible()
    row.locator("input[type=checkbox]").check()
    pg.wait_for_function("document.querySelector('#chart-compare svg').dataset.points > 4")
    pg.fill("#resume-steps", str(stopped_at + 15))
    pg.locator(f'#ckpt-table tr[data-ckpt="{ck}"] button', has_text="resume").click()
    sync_api.expect(pg.locator("#detail-msg")).to_contain_text(f"run1 resumed from {ck}")
    sync_api.expect(row).to_contain_text("finished", timeout=60000)
    sync_api.expect(row).to_contain_text(f"{stopped_at + 15} / {stopped_at + 15}")
    row.locator("input[type=checkbox]").uncheck()
    row.locator("input[type=checkbox]").check()
    pg.select_option("#eval-on", "dataset:main")
    pg.click("#eval-go")
    sync_api.expect(pg.locator("#eval-out")).to_contain_text("bits/byte")

    # -- Chat: tokens stream, then a memory is saved --------------------------------------------------------------
    pg.click("nav button[data-tab=chat]")
    pg.select_option("#chat-model", "runs/run1")
    pg.click("#chat-load")
    sync_api.expect(pg.locator("#chat-model-info")).to_contain_text("D=32")
    pg.fill("#chat-system", "Tell a short story.")
    pg.fill("#s-max_tokens", "60")
    pg.evaluate("""() => { window.__lens = [];
        new MutationObserver(() => { const t = document.querySelector('.bubble.assistant.streaming .text');
          if (t) window.__lens.push(t.textContent.length); })
        .observe(document.getElementById('chat-log'), {subtree: true, childList: true, characterData: true}); }""")
    for attempt in range(4):  # a tiny model may end its answer at once; ask again
        pg.evaluate("window.__lens = []")
        pg.fill("#s-seed", str(attempt + 1))
        pg.fill("#chat-input", "Tom and Lily played in the garden")
        pg.click("#chat-send")
        last = pg.locator(".bubble.assistant").last
        sync_api.expect(last).not_to_have_class("bubble assistant streaming", timeout=30000)
        pg.wait_for_function("!document.querySelector('.bubble.assistant.streaming')")
        if int(last.get_attribute("data-pieces") or 0) >= 3:
            break
    pieces = int(last.get_attribute("data-pieces"))
    lens = pg.evaluate("window.__lens")
    assert pieces >= 3 and len(set(lens)) >= 2, (pieces, lens)  # shown piece by piece, not all at the end
    sync_api.expect(pg.locator("#chat-stats")).to_contain_text("tokens/s")
    assert int(pg.inner_text("#mem-tokens").replace(",", "")) > 0
    pg.fill("#mem-name", "notes")
    pg.click("#mem-save")
    sync_api.expect(pg.locator("#mem-msg")).to_contain_text("saved memory notes")
    sync_api.expect(pg.locator('#mem-table tr[data-memory="notes"]')).to_be_visible()
    assert os.path.isfile(os.path.join(root, "demo", "memory", "notes.mem.safetensors"))
    pg.click("#mem-save")
    sync_api.expect(pg.locator("#mem-msg")).to_contain_text("already exists")

    # -- screenshots of every tab ---------------------------------------------------------------------------------
    for tab in ("data", "train", "runs", "chat"):
        pg.click(f"nav button[data-tab={tab}]")
        if tab == "data":
            pg.select_option("#tok-view", "tok")
            pg.locator("#raw-table tbody tr").first.click()
        pg.wait_for_timeout(400)
        pg.screenshot(path=os.path.join(ARTIFACTS, f"studio-{tab}.png"), full_page=True)
    assert pg.errors == []
