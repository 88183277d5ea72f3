"""`birdsep serve` end to end in headless Chromium (Debian's `chromium`, driven by Playwright
for Python; no browser download): the tests start `birdsep serve` on a free port with BirdNET,
open the bundled example, play/solo/mute tracks, click a detection, upload a corrupt file and
try a path traversal. Each state's screenshot is saved in the test's temporary folder;
`pytest --serve-screenshot docs/serve.png` also writes the README's picture.
"""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("BIRDSEP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Chromium as this machine needs it: no sandbox as root, no GPU, and none of its own network
# traffic (update checks, sync, QUIC), which a closed network refuses; audio may start without
# a click and goes nowhere.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required", "--mute-audio"]
EXAMPLE = "example/jura_forest_dawn.flac"

pytestmark = pytest.mark.slow
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed (pip install playwright)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`birdsep serve` on a free port with BirdNET, a --root holding a recording and a symlink out."""
    from birdsep.serve.library import birdnet_available

    if not birdnet_available():
        pytest.skip("the BirdNET extra is not installed (pip install 'birdsep[birdnet]')")
    tmp = tmp_path_factory.mktemp("serve")
    root = tmp / "field"
    root.mkdir()
    shutil.copy(REPO / "src" / "birdsep" / "examples" / "jura_forest_dawn.flac", root / "dawn copy.flac")
    (tmp / "secret.wav").write_bytes(b"secret")
    os.symlink(tmp / "secret.wav", root / "link_out.wav")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen([sys.executable, "-m", "birdsep", "serve", "--port", "0", "--root", str(root),
                             "--out", str(tmp / "out"), "--classifier", "birdnet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    if not line.startswith("birdsep serve: http://"):
        proc.kill()
        raise AssertionError(f"birdsep serve did not start: {line}{proc.stderr.read()}")
    yield {"url": line.split()[2].rstrip("/"), "tmp": tmp, "proc": proc}
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium; scripts/test.sh does it)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server, tmp_path):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, base_url=server["url"])
    pg = context.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.shots = tmp_path
    yield pg
    context.close()
    assert not errors, errors


def shot(pg, name):
    pg.screenshot(path=str(pg.shots / f"{name}.png"), full_page=True)


def audio_state(pg):
    return pg.evaluate("""() => Object.fromEntries([...document.querySelectorAll('#audio audio')].map(
        (a) => [a.dataset.track, {paused: a.paused, muted: a.muted, time: a.currentTime}]))""")


def open_view(pg, rid=EXAMPLE):
    pg.goto(f"/#/open?id={rid}")
    pg.wait_for_selector("#player:not([hidden])", timeout=180_000)
    pg.wait_for_function("() => birdsep.view && [...birdsep.view.ws.getWrapper().querySelectorAll('img[data-view]')]"
                         ".every((i) => i.complete && i.naturalWidth > 0)", timeout=60_000)


def sources(pg):
    return pg.evaluate("() => birdsep.config.separators.find((s) => s.default).sources")


def test_open_the_example_see_tracks_and_detections(page, server):
    page.goto("/")
    shot(page, "1_home")
    page.click("#open-example")
    page.wait_for_selector("#progress:not([hidden])", timeout=30_000)  # first time: the work is shown
    page.wait_for_function("() => /separating|classifying/.test(document.querySelector('#progress .text').textContent)",
                           timeout=60_000)
    shot(page, "2_progress")
    page.wait_for_selector("#player:not([hidden])", timeout=180_000)
    m = sources(page)
    assert page.locator(".track-row[data-track^='source_']").count() == m
    assert page.locator("#detections tbody tr.detection").count() >= 1
    first = page.locator("#detections tbody tr.detection").first
    assert first.locator(".common").inner_text() and first.locator(".scientific").inner_text()
    regions = page.locator("#timeline [part~='region']")
    assert regions.count() >= 1
    assert page.locator("#downloads a[data-what='raven']").count() == 1
    shot(page, "3_view")


def test_birdnet_location_fields_follow_the_classifier(page, server):
    """lat/lon/week show next to BirdNET only, go into the address (so into the server's
    settings) and come back from it."""
    page.goto("/")
    page.wait_for_function("() => birdsep.config")
    assert page.input_value("#classifier") == "birdnet" and page.is_visible("#location")
    page.fill("#lat", "47.5")
    page.fill("#lon", "7.6")
    page.fill("#week", "20")
    page.dispatch_event("#settings", "change")
    page.wait_for_function("() => location.hash.includes('week=20')")
    assert "lat=47.5" in page.url and "lon=7.6" in page.url
    page.select_option("#classifier", "none")
    page.dispatch_event("#settings", "change")
    page.wait_for_function("() => !location.hash.includes('lat=')")
    assert not page.is_visible("#location")
    page.goto("/#/?lat=-33.9&lon=151.2&week=40")
    page.wait_for_function("() => document.querySelector('#lat').value === '-33.9'")
    assert page.input_value("#lon") == "151.2" and page.input_value("#week") == "40" and page.is_visible("#location")
    # the address the form writes is routed after the user has moved on to the next field: what
    # they typed there meanwhile stays (the route must not refill the form from the address)
    routed = page.evaluate("() => birdsep.route")
    page.evaluate("""() => { document.querySelector('#lat').value = '12.5';
        document.querySelector('#settings').dispatchEvent(new Event('change'));
        document.querySelector('#lon').value = '3.25'; }""")
    page.wait_for_function(f"() => birdsep.route > {routed} && location.hash.includes('lat=12.5')")
    assert page.input_value("#lon") == "3.25"
    page.wait_for_selector("#library .root[data-root='field']", timeout=30_000)
    assert page.is_hidden("#error")  # the folder listing took the settings


def test_combine_rule_follows_the_mode(page, server):
    """classify's --combine rules show next to the mode that pools (mix+separated) only, go into
    the address when not the default and come back from it."""
    page.goto("/")
    page.wait_for_function("() => birdsep.config")
    config = page.evaluate("() => birdsep.config")
    assert page.input_value("#mode") == config["pooled_mode"] and page.is_visible("#combine")
    options = page.eval_on_selector_all("#combine option", "els => els.map((e) => e.value)")
    assert options == config["rules"] and page.input_value("#combine") == config["defaults"]["combine"]
    page.select_option("#combine", "max")
    page.dispatch_event("#settings", "change")
    page.wait_for_function("() => location.hash.includes('combine=max')")
    page.select_option("#mode", "mix")
    page.dispatch_event("#settings", "change")
    page.wait_for_function("() => !location.hash.includes('combine=')")
    assert not page.is_visible("#combine")
    page.goto("/#/?combine=max")
    page.wait_for_function("() => document.querySelector('#combine').value === 'max'")
    assert page.input_value("#mode") == config["pooled_mode"] and page.is_visible("#combine")
    page.wait_for_selector("#library .root[data-root='field']", timeout=30_000)
    assert page.is_hidden("#error")  # the folder listing took the setting


def test_already_processed_opens_at_once_and_a_second_tab_shares_the_job(page, server, browser):
    open_view(page)  # the example, done by the test before: no job, no progress
    assert page.locator("#progress").is_hidden()
    before = len(page.request.get("/api/jobs").json())
    tabs = [page.context.new_page() for _ in range(2)]
    for t in tabs:  # a recording not processed yet, opened twice at once
        t.goto("/#/open?id=field/dawn%20copy.flac")
    for t in tabs:
        t.wait_for_selector("#player:not([hidden])", timeout=180_000)
    jobs = [j for j in page.request.get("/api/jobs").json() if j["id"] == "field/dawn copy.flac"]
    assert len(jobs) == 1 and len(page.request.get("/api/jobs").json()) == before + 1
    tabs[1].shots = page.shots
    shot(tabs[1], "4_second_tab")
    page.goto("/")
    page.wait_for_selector("#library .root[data-root='field'] tr.recording")
    row = page.locator("#library tr.recording[data-id='field/dawn copy.flac']")
    assert row.locator(".status").inner_text() == "done" and int(row.locator("td").nth(4).inner_text()) >= 1
    assert page.locator("#library tr.recording[data-id='field/link_out.wav']").count() == 0
    shot(page, "5_folder_view")


def test_play_solo_and_mute_tracks(page, server):
    open_view(page)
    page.click("#play")
    page.wait_for_function("() => [...document.querySelectorAll('#audio audio')].every((a) => !a.paused)")
    state = audio_state(page)
    assert state["mix"]["muted"] and not any(state[f"source_{k}"]["muted"] for k in range(1, sources(page) + 1))
    page.click(".track-row[data-track='source_2'] .mute")  # the mix minus track 2
    state = audio_state(page)
    assert state["source_2"]["muted"] and not state["source_1"]["muted"] and not state["source_3"]["muted"]
    shot(page, "6_mute_track_2")
    page.click(".track-row[data-track='source_1'] .solo")
    state = audio_state(page)
    assert not state["source_1"]["muted"]
    assert all(state[k]["muted"] for k in state if k != "source_1")
    shot(page, "7_solo_track_1")
    page.click(".track-row[data-track='source_3'] .play")  # this track alone
    state = audio_state(page)
    assert [k for k, v in state.items() if not v["muted"]] == ["source_3"]
    assert not any(v["paused"] for v in state.values())
    page.wait_for_timeout(300)
    times = [v["time"] for v in audio_state(page).values()]
    assert max(times) - min(times) < 0.15  # the tracks play together
    page.click("#play")
    page.wait_for_function("() => [...document.querySelectorAll('#audio audio')].every((a) => a.paused)")
    # levels above 0 dB: a Web Audio gain, not the element's volume
    page.locator(".track-row[data-track='source_3'] .level-slider").fill("12")
    assert page.locator(".track-row[data-track='source_3'] .gain").inner_text() == "+12 dB"
    assert page.evaluate("() => birdsep.view.mixer.byId.source_3.gainDb") == 12


def test_clicking_a_detection_plays_its_window_from_its_track(page, server, pytestconfig):
    open_view(page)
    rows = page.locator("#detections tbody tr.detection")
    target = None
    for i in range(rows.count()):  # a detection that is not at the start, from a separated track if any
        r = rows.nth(i)
        if float(r.get_attribute("data-start")) > 0:
            target = r if target is None or r.get_attribute("data-track") != "mix" else target
    assert target is not None
    start, end = float(target.get_attribute("data-start")), float(target.get_attribute("data-end"))
    track = target.get_attribute("data-track")
    target.click()
    page.wait_for_function(f"() => birdsep.view.ws.getCurrentTime() >= {start}")
    now = page.evaluate("() => birdsep.view.ws.getCurrentTime()")
    assert start <= now < end
    state = audio_state(page)
    assert [k for k, v in state.items() if not v["muted"]] == [track] and not state[track]["paused"]
    cursor = page.evaluate("""() => {
        const wrapper = birdsep.view.ws.getWrapper();
        const c = wrapper.querySelector('.cursor').getBoundingClientRect();
        const w = wrapper.getBoundingClientRect();
        return (c.left - w.left) / w.width;
    }""")
    duration = page.evaluate("() => birdsep.view.result.duration")
    assert abs(cursor - now / duration) < 0.03  # the playhead is drawn where the audio is
    assert "playing" in target.get_attribute("class")
    shot(page, "8_detection_playing")
    screenshot = pytestconfig.getoption("--serve-screenshot")
    if screenshot:
        page.locator("#play").scroll_into_view_if_needed()
        page.screenshot(path=str(REPO / screenshot), clip={"x": 0, "y": 0, "width": 1400, "height": 1000})
    page.wait_for_function(f"() => birdsep.view.mixer.playing === false", timeout=(end - start + 5) * 1000)
    assert page.evaluate("() => birdsep.view.ws.getCurrentTime()") >= end - 0.3  # stopped at the window's end
    state = audio_state(page)
    assert state["mix"]["muted"] and not state["source_1"]["muted"]  # the mixer's own settings are back


def test_zoom_draws_the_visible_stretch_again(page, server):
    open_view(page)
    page.locator("#zoom").fill("100")
    page.wait_for_function("""() => [...birdsep.view.ws.getWrapper().querySelectorAll('img')]
        .some((i) => !i.dataset.view && i.style.display !== 'none' && i.complete && i.naturalWidth > 0)""",
                           timeout=30_000)
    width = page.evaluate("() => birdsep.view.ws.getWrapper().scrollWidth")
    assert width > 3000  # 600 px per second
    shot(page, "9_zoomed")


def test_a_corrupt_upload_shows_an_error_and_the_server_goes_on(page, server):
    page.goto("/")
    page.set_input_files("#file", files=[{"name": "broken.wav", "mimeType": "audio/wav",
                                          "buffer": b"RIFF\x10\x00\x00\x00WAVEfmt " + os.urandom(3000)}])
    page.wait_for_selector("#error:not([hidden])")
    message = page.locator("#error .message").inner_text()
    assert message.startswith("broken.wav: cannot read audio"), message
    shot(page, "10_corrupt_upload")
    assert page.request.get("/api/config").ok
    assert server["proc"].poll() is None


def test_a_file_chosen_before_the_settings_arrive_waits_for_them(page, server):
    held = []  # /api/config held back, as on a slow machine, while a file is chosen
    page.route("**/api/config", lambda route: held.append(route))
    page.goto("/")
    page.set_input_files("#file", files=[{"name": "early.wav", "mimeType": "audio/wav",
                                          "buffer": b"RIFF\x10\x00\x00\x00WAVEfmt " + os.urandom(3000)}])
    page.wait_for_timeout(300)
    assert len(held) == 1 and page.locator("#error").is_hidden()  # nothing happened yet, and no script error
    held[0].continue_()
    page.unroute("**/api/config")
    page.wait_for_selector("#error:not([hidden])")
    message = page.locator("#error .message").inner_text()
    assert message.startswith("early.wav: cannot read audio"), message


def test_a_path_traversal_is_refused(page, server):
    page.goto("/#/open?id=example/../../../../etc/passwd")
    page.wait_for_selector("#error:not([hidden])")
    assert "refused" in page.locator("#error .message").inner_text()
    assert page.locator("#player").is_hidden()
    shot(page, "11_traversal_refused")
    for rid in ("../../../etc/passwd", "/etc/passwd", "field/link_out.wav", "field/../secret.wav"):
        r = page.request.get(f"/api/audio?id={rid}")
        assert r.status == 403 and b"secret" not in r.body(), rid
