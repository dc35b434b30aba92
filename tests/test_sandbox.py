"""The EHR sandbox page: its API (test client) and the page itself in Debian's headless Chromium
(Playwright driving /usr/bin/chromium; no browser download). Screenshots are kept as test
artefacts in test-artifacts/sandbox/. The browser tests use the keyboard alone where a nurse would."""
from __future__ import annotations

import json
import os
from html.parser import HTMLParser
import shutil
import threading
import time
from pathlib import Path

import jwt
import pytest
from werkzeug.serving import make_server

from cds_hooks.sandbox import keys
from cds_hooks.sandbox.markdown import render
from cds_hooks.store import get_store
from conftest import ROOT
from tests.support.cds_app import load, make_app, uscore_paths

ARTIFACTS = Path(os.environ.get("TRIAGE_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "sandbox"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
VITALS = {"heart_rate": 128, "respiratory_rate": 26, "systolic": 86, "diastolic": 50, "temperature": 37.2, "spo2": 91}


def sandbox_app(path: Path, **overrides):
    # Auth ON: the sandbox's token is the only key the service trusts here (no clients file).
    config = dict(TRIAGE_SANDBOX=True, TRIAGE_INSECURE_NO_AUTH=False, TRIAGE_CLIENTS_FILE=None,
                  TRIAGE_SCRUB_FREE_TEXT=False)
    config.update(overrides)
    return make_app(path, **config)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return sandbox_app(tmp_path_factory.mktemp("sandbox"))


# --- API ------------------------------------------------------------------------------------------


def test_off_by_default_and_its_key_trusted_only_when_on(tmp_path):
    on = sandbox_app(tmp_path)
    built = on.test_client().post("/sandbox/api/hook-request", json={"source": "vignette:ankle-sprain", "vitals": {}})
    headers = {"Authorization": f"Bearer {built.get_json()['token']}"}
    off = make_app(tmp_path, TRIAGE_INSECURE_NO_AUTH=False, TRIAGE_CLIENTS_FILE=None, TRIAGE_SCRUB_FREE_TEXT=False)
    client = off.test_client()
    assert client.get("/sandbox").status_code == 401  # no such page: the JWT check answers first
    assert make_app(tmp_path / "open", TRIAGE_SCRUB_FREE_TEXT=False).test_client().get("/sandbox").status_code == 404
    # The same instance folder holds the key, but without TRIAGE_SANDBOX nobody trusts it.
    assert client.post("/cds-services/triage", json=built.get_json()["body"], headers=headers).status_code == 401
    assert on.test_client().post("/cds-services/triage", json=built.get_json()["body"],
                                 headers=headers).status_code == 200


def test_page_has_a_strict_content_security_policy(app):
    response = app.test_client().get("/sandbox")
    assert response.status_code == 200 and b"<h1>Triage CDS" in response.data
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert b"rules-only" in response.data  # no model configured: the page says so
    assert app.test_client().get("/sandbox/static/sandbox.js").status_code == 200


def test_only_loopback_callers(app):
    remote = app.test_client()
    remote.environ_base["REMOTE_ADDR"] = "203.0.113.7"
    for method, path in (("GET", "/sandbox"), ("GET", "/sandbox/api/patients"), ("POST", "/sandbox/api/token")):
        response = remote.open(path, method=method, json={"path": "/cds-services/triage"})
        assert response.status_code == 403 and response.get_json()["error"] == "forbidden"


def test_tokens_only_for_our_endpoints_and_with_the_exact_audience(app):
    client = app.test_client()
    good = client.post("/sandbox/api/token", json={"path": "/cds-services/triage/feedback"})
    claims = jwt.decode(good.get_json()["token"], options={"verify_signature": False})
    assert claims["iss"] == keys.SANDBOX_ISS and claims["aud"] == "http://localhost/cds-services/triage/feedback"
    assert claims["exp"] - claims["iat"] == keys.TOKEN_LIFETIME_S
    for path in ("/cds-services/nope", "/sandbox/api/token", "/cds-services/triage/x", "https://evil.example/"):
        response = client.post("/sandbox/api/token", json={"path": path})
        assert response.status_code == 400 and response.get_json()["error"] == "invalid_request"


def test_patients_defaults_and_bad_input(app):
    client = app.test_client()
    listed = client.get("/sandbox/api/patients").get_json()["patients"]
    assert [p["id"] for p in listed[:4]] == ["vignette:chest-pain-shock", "vignette:infant-fever",
                                              "vignette:ankle-sprain", "vignette:older-confusion"]
    assert any(p["id"] == "synthea:0" for p in listed)  # the shared Synthea bundles
    reference = [p["id"] for p in listed if p["id"].startswith("reference:")]
    assert len(reference) == 260 and all(r.startswith("reference:dev-") for r in reference)  # never held-out
    defaults = client.post("/sandbox/api/defaults", json={"source": "synthea:0"}).get_json()
    assert defaults["vitals"]["heart_rate"] > 0
    for body, field in (({"source": "vignette:x"}, "source"), ({"source": "upload", "bundle": [1]}, "bundle"),
                        ({"source": "vignette:infant-fever", "vitals": {"heart_rate": 9999}}, "vitals.heart_rate"),
                        ({"source": "vignette:infant-fever", "vitals": {"spo2": "lots"}}, "vitals.spo2")):
        response = client.post("/sandbox/api/hook-request", json=body)
        assert response.status_code == 400 and response.get_json()["message"].startswith(field)


def test_a_reference_vignette_with_its_responsiveness(app):
    client = app.test_client()
    defaults = client.post("/sandbox/api/defaults", json={"source": "reference:dev-002"}).get_json()
    assert defaults["vitals"]["avpu"] == "U" and "unresponsive" in defaults["complaint"]
    built = client.post("/sandbox/api/hook-request", json={"source": "reference:dev-002", **defaults}).get_json()
    response = client.post(built["url"], json=built["body"], headers={"Authorization": f"Bearer {built['token']}"})
    [card] = response.get_json()["cards"]
    assert "ESI 1" in card["summary"]  # the reference level of dev-002 (unresponsive, agonal breathing)
    bad = client.post("/sandbox/api/hook-request", json={"source": "reference:dev-002", "vitals": {"avpu": "Q"}})
    assert bad.status_code == 400 and bad.get_json()["message"].startswith("vitals.avpu")


def test_edited_vitals_and_complaint_reach_the_card(app):
    client = app.test_client()
    built = client.post("/sandbox/api/hook-request", json={"source": "vignette:chest-pain-shock", "vitals": VITALS,
                                                           "complaint": "crushing chest pain"}).get_json()
    encounter = built["body"]["prefetch"]["encounter"]
    assert encounter["reasonCode"] == [{"text": "crushing chest pain"}]
    response = client.post(built["url"], json=built["body"], headers={"Authorization": f"Bearer {built['token']}"})
    [card] = response.get_json()["cards"]
    assert card["indicator"] == "critical" and "128 /min" in card["detail"]


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)


@pytest.mark.parametrize("markdown", [
    "<script>window.__pwned = 1</script>",
    "<img src=x onerror=alert(1)>",
    "[click](javascript:alert(1))",
    "[data](data:text/html;base64,PHNjcmlwdD4=)",
    '<a href="https://x.example" onclick="alert(1)">x</a>',
    "<iframe src=https://evil.example></iframe>",
    "<style>body{display:none}</style>",
    "[x](JaVaScRiPt:alert(1)) and <svg onload=alert(1)>",
])
def test_markdown_is_rendered_safely(markdown):
    parsed = _Tags()
    parsed.feed(render(markdown))
    assert set(parsed.tags) <= {"p", "a", "strong", "em"}, parsed.tags
    for name, value in parsed.attrs:
        assert not name.startswith("on") and name in {"href", "rel", "title"}, name
        if name == "href":
            assert value.startswith(("http://", "https://")), value


def test_markdown_keeps_what_cards_use():
    html = render("**bold** _it_\n\n| a | b |\n|---|--:|\n| 1 | 2 |\n\n- item\n\n[guide](https://example.org/x)")
    assert "<strong>bold</strong>" in html and "<table>" in html and "<li>item</li>" in html
    assert '<a href="https://example.org/x" rel="noopener noreferrer">guide</a>' in html


# --- Browser --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.fail("Debian's chromium is not installed: `make install-test` installs it (apt package chromium)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


class LiveServer:
    def __init__(self, app):
        self.app = app
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.thread.join(timeout=5)


@pytest.fixture()
def page(browser):
    # bypass_csp: Playwright's waits evaluate script, which the page's CSP forbids; it also means
    # the hostile-card test shows the escaping alone stops script, without the CSP's help.
    context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    yield page
    context.close()


def tab_to(page, selector: str, limit: int = 40) -> None:
    """Press Tab until `selector` has the focus (keyboard only)."""
    for _ in range(limit):
        if page.evaluate("(s) => document.activeElement && document.activeElement.matches(s)", selector):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"Tab never reached {selector}")


def test_keyboard_only_open_a_chart_and_override_with_a_reason(browser, page, tmp_path):
    app = sandbox_app(tmp_path)
    with LiveServer(app) as live:
        page.goto(live.url + "/sandbox")
        page.wait_for_function("document.querySelectorAll('#source option').length > 4")
        tab_to(page, "#source")
        page.keyboard.press("Home")  # first vignette: chest pain with shock
        page.keyboard.press("ArrowDown")
        page.keyboard.press("ArrowUp")
        page.wait_for_function("document.getElementById('heart_rate').value === '128'")
        tab_to(page, "#complaint")
        page.keyboard.press("Control+A")
        page.keyboard.type("Crushing chest pain, sweating")
        tab_to(page, "#fire")
        page.keyboard.press("Enter")
        page.wait_for_selector("article.card")
        assert page.evaluate("document.activeElement.id") == "cards-heading"  # focus moved to the cards
        card = page.locator("article.card").first
        assert "critical" in card.get_attribute("class") and card.locator(".badge").inner_text() == "Critical"
        assert card.locator("table").count() == 1  # the Markdown table rendered as a table
        page.screenshot(path=str(ARTIFACTS / "01-cards.png"), full_page=True)
        tab_to(page, "article.card select")
        page.keyboard.press("ArrowDown")  # first override reason
        reason = page.evaluate("document.activeElement.selectedOptions[0].textContent")
        tab_to(page, "article.card button:not(.primary)")
        assert page.evaluate("document.activeElement.textContent") == "Override"
        page.keyboard.press("Enter")
        page.wait_for_selector("text=Feedback stored (overridden)")
        page.screenshot(path=str(ARTIFACTS / "02-overridden.png"), full_page=True)
        uuid = card.get_attribute("id").removeprefix("card-")
    [row] = get_store(app).feedback_for(uuid)
    assert row["outcome"] == "overridden" and row["card_known"] is True
    assert row["override_reason_display"] == reason and row["override_reason_code"]
    assert not page.errors


def test_upload_a_bundle_and_accept(browser, page, tmp_path):
    app = sandbox_app(tmp_path)
    bundle_file = tmp_path / "patient.json"
    bundle_file.write_text(json.dumps(load(uscore_paths()[0])))  # patient 355: has a heart rate to show
    with LiveServer(app) as live:
        page.goto(live.url + "/sandbox")
        page.wait_for_function("document.querySelectorAll('#source option').length > 4")
        page.set_input_files("#upload", str(bundle_file))
        page.wait_for_function("document.getElementById('source').value === 'upload'")
        page.wait_for_function("document.getElementById('heart_rate').value !== ''")
        page.keyboard.press("Tab")
        tab_to(page, "#fire")
        page.keyboard.press("Enter")
        page.wait_for_selector("article.card button.primary")
        tab_to(page, "article.card button.primary")
        page.keyboard.press("Enter")
        page.wait_for_selector("text=Feedback stored (accepted)")
        page.screenshot(path=str(ARTIFACTS / "03-uploaded-accepted.png"), full_page=True)
        uuid = page.locator("article.card").first.get_attribute("id").removeprefix("card-")
    assert get_store(app).feedback_for(uuid)[0]["outcome"] == "accepted"
    assert not page.errors


HOSTILE = {"cards": [{
    "uuid": "00000000-0000-4000-8000-000000000001", "indicator": "warning",
    "summary": "<img src=x onerror=\"window.__pwned=1\"> summary",
    "detail": "<script>window.__pwned=2</script>\n\n[x](javascript:window.__pwned=3)\n\n<b onmouseover=\"window.__pwned=4\">b</b>",
    "source": {"label": "<i>label</i>", "url": "javascript:window.__pwned=5"},
    "links": [{"label": "bad link", "url": "javascript:window.__pwned=6", "type": "absolute"},
              {"label": "good link", "url": "https://example.org/guide", "type": "absolute"}],
}]}


def test_a_hostile_card_cannot_run_script_or_inject_markup(browser, page, tmp_path):
    app = sandbox_app(tmp_path)
    with LiveServer(app) as live:
        page.route("**/cds-services/triage", lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(HOSTILE)))
        page.goto(live.url + "/sandbox")
        page.wait_for_function("document.querySelectorAll('#source option').length > 4")
        page.click("#fire")
        page.wait_for_selector("article.card")
        page.hover("article.card .detail")
        time.sleep(0.2)
        page.screenshot(path=str(ARTIFACTS / "04-hostile-card.png"), full_page=True)
        assert page.evaluate("window.__pwned") is None
        cards = page.locator("#cards")
        assert cards.locator("script, img, iframe, [onerror], [onmouseover], [onclick]").count() == 0
        hrefs = [a.get_attribute("href") for a in cards.locator("a").all()]
        assert hrefs == ["https://example.org/guide"]  # javascript: links dropped
        assert "<img src=x" in cards.locator("h3").inner_text()  # shown as text, not markup
        assert cards.locator(".source").inner_text() == "Source: <i>label</i>"


@pytest.mark.slow
def test_report_being_prepared_refreshes_into_the_ai_card(browser, page, tmp_path, tiny_model_dir):
    app = sandbox_app(tmp_path, TRIAGE_MODEL_PATH=str(tiny_model_dir), TRIAGE_HOOK_DEADLINE_MS=450)
    try:
        with LiveServer(app) as live:
            page.goto(live.url + "/sandbox")
            page.wait_for_function("document.querySelectorAll('#source option').length > 4")
            assert "AI reports on" in page.inner_text("#ai-mode")
            page.click("#fire")
            # The first view: the model is still loading, so the AI card is "being prepared".
            page.wait_for_selector("article.card[data-kind='pending']", timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "05-pending.png"), full_page=True)
            page.wait_for_selector("article.card[data-kind='ai']", timeout=90_000)
            assert page.locator("article.card[data-kind='pending']").count() == 0
            page.screenshot(path=str(ARTIFACTS / "06-ai-card.png"), full_page=True)
            ai = page.locator("article.card[data-kind='ai']")
            assert "AI (preliminary)" in ai.locator("h3").inner_text()
            assert ai.locator("select option").count() > 1  # the AI card's override reasons
    finally:
        app.extensions["triage_runtime"].reports.close()
    assert not page.errors
