"""The HTTP service: answers match the Predictor, bad input gets 4xx and never takes it down, batching
happens under concurrency, the OpenAPI schema survives generated input, and the web page works in a
real browser."""

from __future__ import annotations

import asyncio
import base64
import io
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from PIL import Image

from conftest import CHROMIUM, CHROMIUM_FLAGS, served_at
from imgclf.data.preprocess import prepare_image
from imgclf.export.exporter import export_model
from imgclf.inference.predictor import Predictor
from imgclf.serve import ServeSettings, create_app
from imgclf.serve.batching import MicroBatcher


@pytest.fixture(scope="module")
def served(shapes_model, tmp_path_factory: pytest.TempPathFactory):
    """The session's model on RGB shapes, exported to ONNX (a copy), its data, and a Predictor for it."""
    artifact, data = shapes_model
    copy = tmp_path_factory.mktemp("serve") / "model"
    shutil.copytree(artifact, copy)
    export_model(copy)
    return Predictor.from_path(copy), data


@pytest.fixture(scope="module")
def client(served):
    predictor, _ = served
    with TestClient(create_app(predictor, ServeSettings(max_pixels=1_000_000, max_body_mb=2.0))) as client:
        yield client


def tga_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (90, 90, 90)).save(buffer, format="TGA")
    return buffer.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_health_and_model(client) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["ready"] is True and health["turned_away"] == 0
    model = client.get("/model").json()
    assert model["classes"] == ["cross", "disc", "square"]
    assert model["preprocessing"]["width"] == 32 and model["backend"] == "onnxruntime"
    assert "val_acc" in model["metrics"] and "source" not in model["dataset"]


def test_multipart_predictions_match_the_predictor(client, served) -> None:
    predictor, data = served
    paths = sorted((data / "disc").iterdir())[:2] + sorted((data / "cross").iterdir())[:1]
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]
    response = client.post("/predict", params={"top_k": 2}, files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["backend"] == "onnxruntime" and len(body["predictions"]) == 3
    for path, answer in zip(paths, body["predictions"]):
        expected = predictor.predict(str(path), top_k=2)[0]
        assert answer["image"] == path.name
        assert [s["label"] for s in answer["top"]] == expected.labels
        assert [s["probability"] for s in answer["top"]] == pytest.approx(expected.probabilities, abs=1e-5)


def test_json_base64_with_names_and_top_k(client, served) -> None:
    _, data = served
    path = sorted((data / "square").iterdir())[0]
    encoded = base64.b64encode(path.read_bytes()).decode()
    body = {"images": [encoded, f"data:image/png;base64,{encoded}"], "names": ["first"], "top_k": 1}
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["image"] for p in predictions] == ["first", "image-2"]
    assert all(len(p["top"]) == 1 for p in predictions)
    assert predictions[0]["top"] == predictions[1]["top"]


def test_bad_input_gets_a_json_error_and_the_server_keeps_serving(client, served, tmp_path: Path) -> None:
    _, data = served
    good = sorted((data / "disc").iterdir())[0].read_bytes()
    cases = {
        "not an image": (415, {"files": ("a.png", b"this is text", "image/png")}),
        "PostScript": (415, {"files": ("a.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n", "application/postscript")}),
        "a format no camera makes": (415, {"files": ("a.tga", tga_bytes(), "image/x-tga")}),
        "truncated": (400, {"files": ("t.png", good[: len(good) // 2], "image/png")}),
        "empty": (400, {"files": ("e.png", b"", "image/png")}),
        "over the pixel limit": (
            400,
            {"files": ("big.png", png_bytes(Image.new("L", (1200, 1000))), "image/png")},
        ),
        "wrong field": (422, {"picture": ("a.png", good, "image/png")}),
    }
    for name, (status, files) in cases.items():
        response = client.post("/predict", files=files)
        assert response.status_code == status, (name, response.text)
        assert response.headers["content-type"].startswith("application/json"), name
    assert "too large" in client.post("/predict", files=cases["over the pixel limit"][1]).json()["detail"]
    refused = client.post("/predict", files=cases["PostScript"][1]).json()["detail"]
    assert refused == (
        "a.eps: a PostScript/EPS file: only JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC/HEIF and AVIF images "
        "are accepted here"
    )
    oversized = client.post("/predict", files={"files": ("huge.png", b"\0" * 2_500_000, "image/png")})
    assert oversized.status_code == 413 and "limit" in oversized.json()["detail"]
    assert client.post("/predict", json={"images": ["@@not base64@@"]}).status_code == 400
    assert client.post("/predict", json={"pictures": []}).status_code == 422
    assert client.post("/predict", json={"images": []}).status_code == 422
    assert client.post("/predict", params={"top_k": 0}, json={"images": ["AAAA"]}).status_code == 422
    assert client.post("/predict", content=b"raw", headers={"content-type": "text/plain"}).status_code == 415
    too_many = [("files", (f"{i}.png", good, "image/png")) for i in range(40)]
    assert client.post("/predict", files=too_many).status_code == 413
    assert client.post("/predict", files={"files": ("ok.png", good, "image/png")}).status_code == 200


def test_web_page_and_docs_load_nothing_from_other_hosts(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and 'id="file"' in page.text
    assert "http://" not in page.text and "https://" not in page.text
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/docs-static/swagger-ui-bundle.js" in docs.text
    assert (
        "/docs-static/favicon.png" in docs.text and client.get("/docs-static/favicon.png").status_code == 200
    )
    assert "cdn" not in docs.text.lower()
    assert client.get("/docs-static/swagger-ui-bundle.js").status_code == 200
    schema = client.get("/openapi.json").json()
    content = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(content)


def test_concurrent_requests_are_batched_and_answered_correctly(served) -> None:
    predictor, data = served
    paths = sorted((data / "square").iterdir())[:6] + sorted((data / "disc").iterdir())[:6]
    app = create_app(predictor, ServeSettings(max_batch=16, batch_wait_ms=50))

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await asyncio.gather(
                *[
                    http.post("/predict", files={"files": (p.name, p.read_bytes(), "image/png")})
                    for p in paths
                ]
            )

    responses = asyncio.run(run())
    assert all(r.status_code == 200 for r in responses)
    for path, response in zip(paths, responses):
        assert response.json()["predictions"][0]["top"][0]["label"] == predictor.predict(str(path))[0].label
    stats = app.state.batcher.stats
    assert stats.images == 12 and stats.largest > 1 and stats.batches < 12


def test_micro_batcher_without_batching_runs_requests_alone() -> None:
    seen: list[int] = []

    def run(images: np.ndarray) -> np.ndarray:
        seen.append(len(images))
        time.sleep(0.005)
        return images.reshape(len(images), -1)[:, :2].astype(np.float32)

    async def main(batcher: MicroBatcher) -> list[np.ndarray]:
        inputs = [np.full((1, 2, 2, 1), i, dtype=np.uint8) for i in range(8)]
        return await asyncio.gather(*[batcher.predict(x) for x in inputs])

    outputs = asyncio.run(main(MicroBatcher(run, max_batch=1)))
    assert seen == [1] * 8
    assert [int(o[0, 0]) for o in outputs] == list(range(8))  # every request gets its own rows
    seen.clear()
    outputs = asyncio.run(main(MicroBatcher(run, max_batch=8, wait_s=0.05)))
    assert max(seen) > 1 and sum(seen) == 8
    assert [int(o[0, 0]) for o in outputs] == list(range(8))


# --------------------------------------------------------------------------------------------------
# schemathesis: generated requests from the OpenAPI schema never get a server error
# --------------------------------------------------------------------------------------------------
def test_generated_requests_never_get_a_server_error(served) -> None:
    """Every operation of the schema, with Hypothesis-generated bodies and parameters (both media types
    of POST /predict included). schemathesis's pytest plug-in is not used: it does not run on pytest 9."""
    predictor, _ = served
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(predictor, ServeSettings()))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {"POST /predict", "GET /model"}
    seen: dict[str, set[int]] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case) -> None:
            response = case.call()
            seen.setdefault(f"{case.method} {case.path}", set()).add(response.status_code)
            assert response.status_code < 500, (case.method, case.path, response.status_code, response.text)

        check()
    assert seen["POST /predict"] & {400, 422}  # generated garbage was refused, not crashed on


# --------------------------------------------------------------------------------------------------
# a real browser: upload an image on the page, read the top label it shows
# --------------------------------------------------------------------------------------------------
@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (see .ci/run)")
def test_web_page_shows_the_top_label_in_chromium(served) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    predictor, data = served
    image = sorted((data / "cross").iterdir())[3]
    expected = predictor.predict(str(image))[0]
    with served_at(create_app(predictor)) as port:
        with playwright.sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
            try:
                page = browser.new_page()
                outside: list[str] = []
                page.on(
                    "request",
                    lambda r: (
                        outside.append(r.url)
                        if not r.url.startswith((f"http://127.0.0.1:{port}", "blob:", "data:"))
                        else None
                    ),
                )
                page.goto(f"http://127.0.0.1:{port}/")
                page.wait_for_function("document.getElementById('model').textContent.includes('classes')")
                page.set_input_files("#file", str(image))
                page.wait_for_selector(".result .label", timeout=20_000)
                top_label = page.locator(".result .row .label").first.text_content()
                top_value = page.locator(".result .row .probability").first.text_content()
                bars = page.locator(".result .bar").count()
            finally:
                browser.close()
        assert top_label == expected.names[0]
        assert top_value == f"{100 * expected.probabilities[0]:.1f}%"
        assert bars == 3 and outside == []


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (see .ci/run)")
def test_the_page_works_as_a_phone_app_in_chromium(served, tmp_path: Path) -> None:
    """A phone-sized viewport: take a photo with the camera input, read the answer, fit the screen,
    offer the web app manifest and its icons, load nothing from other hosts; and a screenshot."""
    playwright = pytest.importorskip("playwright.sync_api")
    predictor, data = served
    image = sorted((data / "disc").iterdir())[2]
    expected = predictor.predict(str(image))[0]
    shot = tmp_path / "phone.png"
    with served_at(create_app(predictor)) as port:
        with playwright.sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
            try:
                phone = browser.new_context(
                    viewport={"width": 390, "height": 844},
                    device_scale_factor=2,
                    is_mobile=True,
                    has_touch=True,
                )
                page = phone.new_page()
                outside: list[str] = []
                local = (f"http://127.0.0.1:{port}", "blob:", "data:")
                page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(local) else None)
                page.goto(f"http://127.0.0.1:{port}/")
                page.wait_for_function("document.getElementById('model').textContent.includes('classes')")
                assert page.locator("#take").is_visible() and page.locator("#camera").get_attribute("capture")
                page.set_input_files("#camera", str(image))
                page.wait_for_selector(".result .label", timeout=20_000)
                top_label = page.locator(".result .row .label").first.text_content()
                widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
                card = page.locator(".result").bounding_box()
                photo = page.locator(".result img").bounding_box()
                manifest = page.evaluate(
                    "fetch(document.querySelector('link[rel=manifest]').href).then((r) => r.json())"
                )
                icons = [
                    page.evaluate(f"fetch('{icon['src']}').then((r) => r.status)")
                    for icon in manifest["icons"]
                ]
                page.screenshot(path=str(shot), full_page=True)
            finally:
                browser.close()
        assert top_label == expected.names[0]
        assert widths[0] <= widths[1] == 390  # no sideways scrolling
        assert card["width"] <= 390 and photo["y"] < card["y"] + 20 and photo["width"] > 300  # photo on top
        assert (
            manifest["display"] == "standalone" and manifest["start_url"] == "./" and icons == [200, 200, 200]
        )
        assert outside == []
        assert Image.open(shot).width == 780  # 390 CSS px at device scale 2


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (see .ci/run)")
def test_the_page_keeps_its_token_for_the_installed_app_and_asks_for_it_without_one(served) -> None:
    """Opened from the printed address the page works and keeps the token; opened again at "./" (what
    the installed app's start_url is) it still works; a browser that never had it is told how to get it,
    and the API page's "Try it out" sends it."""
    from imgclf.serve import Access

    playwright = pytest.importorskip("playwright.sync_api")
    predictor, data = served
    image = sorted((data / "disc").iterdir())[2]
    with (
        served_at(create_app(predictor, access=Access(token="t0k3n"))) as port,
        playwright.sync_playwright() as driver,
    ):
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_context().new_page()
            page.goto(f"http://127.0.0.1:{port}/?token=t0k3n")
            page.wait_for_function("document.getElementById('model').textContent.includes('classes')")
            page.goto(f"http://127.0.0.1:{port}/")  # the installed app: no token in its link
            page.wait_for_function("document.getElementById('model').textContent.includes('classes')")
            page.set_input_files("#camera", str(image))
            page.wait_for_selector(".result .label", timeout=20_000)
            stranger = browser.new_context().new_page()
            stranger.goto(f"http://127.0.0.1:{port}/")
            stranger.wait_for_function("document.getElementById('status').textContent.includes('token')")
            told = stranger.locator("#status").text_content()
            docs = browser.new_context().new_page()
            docs.goto(f"http://127.0.0.1:{port}/docs?token=t0k3n")
            docs.click("#operations-default-model_model_get .opblock-summary", timeout=20_000)
            docs.click("text=Try it out")
            docs.click("text=Execute")
            status = docs.locator(".live-responses-table tbody .response-col_status").first
            status.wait_for(timeout=20_000)
            tried = status.text_content().strip()
        finally:
            browser.close()
    assert "needs its token" in told and "QR code" in told
    assert tried == "200"


def test_explain_answers_a_heatmap_with_the_pytorch_model_and_409_with_an_export(
    served, shapes_model
) -> None:
    predictor, data = served
    image = sorted((data / "square").iterdir())[1]
    with TestClient(create_app(predictor)) as client:  # an exported model: no gradients
        refused = client.post("/explain", files={"files": (image.name, image.read_bytes(), "image/png")})
        assert refused.status_code == 409 and "--backend torch" in refused.json()["detail"]
        assert client.get("/model").json()["explain"] is False
    torch_predictor = Predictor.from_path(shapes_model[0], backend="torch")
    with TestClient(create_app(torch_predictor)) as client:
        assert client.get("/model").json()["explain"] is True
        answer = client.post("/explain", files={"files": (image.name, image.read_bytes(), "image/png")})
        assert answer.status_code == 200, answer.text
        (explanation,) = answer.json()["explanations"]
        expected = torch_predictor.predict(str(image))[0]
        assert explanation["label"] == expected.label and explanation["image"] == image.name
        header, encoded = explanation["heatmap_png"].split(",", 1)
        picture = Image.open(io.BytesIO(base64.b64decode(encoded)))
        assert header == "data:image/png;base64" and picture.size == (2 * 32 * 8, 32 * 8)  # 32 px, x8
        other = client.post(
            "/explain?class=disc", files={"files": (image.name, image.read_bytes(), "image/png")}
        ).json()["explanations"][0]
        assert other["label"] == "disc"
        assert (
            client.post("/explain?class=circle", files={"files": ("a.png", image.read_bytes())}).status_code
            == 400
        )


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (see .ci/run)")
def test_the_page_shows_where_the_model_looked_in_chromium(served, shapes_model) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    _, data = served
    image = sorted((data / "cross").iterdir())[0]
    app = create_app(Predictor.from_path(shapes_model[0], backend="torch"))
    with served_at(app) as port:
        with playwright.sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{port}/")
                page.wait_for_function("document.getElementById('model').textContent.includes('classes')")
                page.set_input_files("#file", str(image))
                page.wait_for_selector(".result .look", timeout=20_000)
                page.click(".result .look")
                page.wait_for_function(
                    "document.querySelector('.result img').src.startsWith('data:image/png')"
                )
                label = page.locator(".result .look").text_content()
                page.click(".result .look")
                back = page.evaluate("document.querySelector('.result img').src.startsWith('blob:')")
            finally:
                browser.close()
        assert label == "Show the photo" and back


def test_pytorch_backend_serves_the_same_answers(served) -> None:
    predictor, data = served
    exact = Predictor.from_path(predictor.onnx.path.parent, backend="torch")
    path = sorted((data / "square").iterdir())[1]
    with TestClient(create_app(exact)) as http:
        answer = http.post("/predict", files={"files": (path.name, path.read_bytes())}).json()
    assert answer["backend"] == "torch"
    expected = predictor.predict(str(path))[0]
    assert answer["predictions"][0]["top"][0]["label"] == expected.label
    assert answer["predictions"][0]["top"][0]["probability"] == pytest.approx(expected.probability, abs=1e-4)


def test_tta_serves_the_mean_of_each_image_and_its_mirror_image(served) -> None:
    predictor, data = served
    mirrored = Predictor.from_path(predictor.onnx.path.parent, tta=True)
    picture = np.asarray(Image.open(sorted((data / "cross").iterdir())[3]).convert("RGB")).copy()
    picture[:, 18:] = 0  # lopsided, so that its mirror image looks different to the model
    array = prepare_image(Image.fromarray(picture), predictor.spec)[None]  # as the service prepares it
    plain = predictor.predict_arrays(array)[0]
    expected = (plain + predictor.predict_arrays(array[:, :, ::-1])[0]) / 2
    assert np.abs(expected - plain).max() > 1e-3
    with TestClient(create_app(mirrored)) as http:
        assert http.get("/model").json()["tta"] is True
        answer = http.post(
            "/predict", params={"top_k": 3}, files={"files": ("a.png", png_bytes(Image.fromarray(picture)))}
        )
    top = answer.json()["predictions"][0]["top"]
    assert [s["probability"] for s in top] == pytest.approx(sorted(expected, reverse=True), abs=1e-5)


def test_serve_command_refuses_bad_options_before_listening(served, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from imgclf.cli import app

    predictor, _ = served
    runner = CliRunner()
    missing = runner.invoke(app, ["serve", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "not found" in missing.output
    zero = runner.invoke(app, ["serve", str(predictor.onnx.path), "--max-batch", "0"])
    assert zero.exit_code == 2 and "--max-batch" in zero.output
    port = runner.invoke(app, ["serve", str(predictor.onnx.path), "--port", "70000"])
    assert port.exit_code == 2
    held = runner.invoke(app, ["serve", str(predictor.onnx.path), "--max-held-mb", "10"])
    assert held.exit_code == 2 and "--max-held-mb must be at least --max-body-mb" in held.output


def test_streamed_body_over_the_limit_gets_413_without_content_length(client) -> None:
    def chunks():
        for _ in range(30):
            yield b"\0" * 100_000  # 3 MB, over the 2 MB limit, sent without a Content-Length

    response = client.post(
        "/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert response.status_code == 413
    assert client.get("/health").status_code == 200


def test_a_token_guards_every_request_but_the_page_the_icons_and_health(served) -> None:
    from imgclf.serve import Access

    predictor, data = served
    image = sorted((data / "disc").iterdir())[0].read_bytes()
    with TestClient(create_app(predictor, access=Access(token="s3cret"))) as http:
        refused = http.get("/model")
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert "token" in refused.json()["detail"]
        assert http.get("/model", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert http.get("/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert http.get("/", params={"token": "s3cret"}).status_code == 200  # the printed address
        assert http.get("/").status_code == 200  # the page (nothing about the model) asks for it
        assert http.get("/openapi.json").status_code == 401 and http.get("/docs").status_code == 401
        docs = http.get("/docs", params={"token": "s3cret"})
        assert docs.status_code == 200 and "requestInterceptor" in docs.text  # "Try it out" sends it
        files = {"files": ("a.png", image, "image/png")}
        assert http.post("/predict", files=files).status_code == 401
        answer = http.post("/predict", files=files, headers={"Authorization": "Bearer s3cret"})
        assert answer.status_code == 200, answer.text
        assert http.get("/health").status_code == 200 and http.get("/icon.svg").status_code == 200
        assert "headers: auth" in http.get("/", params={"token": "s3cret"}).text  # the page sends it


@pytest.mark.parametrize(
    ("host", "status"),
    [("127.0.0.1:8000", 200), ("localhost", 200), ("[::1]:8000", 200), ("evil.example:8000", 403),
     ("127.0.0.1.evil.example", 403)],
)  # fmt: skip
def test_bound_to_loopback_it_answers_only_requests_for_loopback(served, host: str, status: int) -> None:
    from imgclf.serve import Access

    predictor, _ = served
    with TestClient(create_app(predictor, access=Access(loopback_only=True))) as http:
        assert http.get("/model", headers={"Host": host}).status_code == status  # DNS rebinding: 403


@pytest.mark.parametrize(
    ("host", "given", "environment", "require", "expected"),
    [
        ("127.0.0.1", None, None, None, None),  # loopback: no token unless asked
        ("0.0.0.0", None, None, None, "made up"),
        ("0.0.0.0", "mine", None, None, "mine"),
        ("0.0.0.0", None, "from-env", None, "from-env"),
        ("0.0.0.0", None, None, False, None),  # --no-token
        ("127.0.0.1", "mine", None, None, "mine"),
    ],
)
def test_serve_requires_a_token_off_loopback(
    shapes_model, monkeypatch: pytest.MonkeyPatch, host, given, environment, require, expected
) -> None:
    import uvicorn

    from imgclf import api

    artifact, _ = shapes_model
    if environment:
        monkeypatch.setenv("IMGCLF_TOKEN", environment)
    else:
        monkeypatch.delenv("IMGCLF_TOKEN", raising=False)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: None)
    seen = []
    api.serve(artifact, host=host, token=given, require_token=require, backend="torch",
              on_start=lambda predictor, token, admission, app: seen.append(token))  # fmt: skip
    if expected == "made up":
        assert seen[0] is not None and len(seen[0]) >= 24
    else:
        assert seen == [expected]


def test_a_full_route_turns_requests_away_with_503_and_health_says_so(shapes_model) -> None:
    """/explain's one turn is taken and its queue full: the next request gets 503 with Retry-After at
    once, /health says overloaded (still ready for /predict), and /predict keeps answering."""
    import asyncio

    import httpx

    artifact, data = shapes_model
    predictor = Predictor.from_path(artifact, backend="torch")  # one that can explain
    image = sorted((data / "disc").iterdir())[0].read_bytes()
    settings = ServeSettings(explain_active=1, explain_waiting=0, max_active=2, max_waiting=0)
    app = create_app(predictor, settings)
    predict_gate, explain_gate, _ = app.state.gates

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        client = httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1")
        async with client as http, explain_gate.enter():  # a long explanation holds the only turn
            refused = await http.post("/explain", files={"files": ("a.png", image, "image/png")})
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert "busy" in refused.json()["detail"]
            health = (await http.get("/health")).json()
            assert health["status"] == "overloaded" and health["ready"] is True
            assert health["explain_active"] == 1 and health["turned_away"] == 1
            answer = await http.post("/predict", files={"files": ("a.png", image, "image/png")})
            assert answer.status_code == 200, answer.text  # /predict is not starved
            async with predict_gate.enter(), predict_gate.enter():
                assert (await http.get("/health")).json()["ready"] is False
                full = await http.post("/predict", files={"files": ("a.png", image, "image/png")})
                assert full.status_code == 503

    asyncio.run(scenario())


def test_serve_off_loopback_prints_the_address_with_its_token_and_a_qr_code(
    shapes_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn
    from typer.testing import CliRunner

    from imgclf.cli import app
    from imgclf.serve.access import address_qr, reachable_address

    artifact, _ = shapes_model
    monkeypatch.delenv("IMGCLF_TOKEN", raising=False)
    monkeypatch.setattr(uvicorn, "run", lambda application, **kwargs: None)
    result = CliRunner().invoke(app, ["serve", str(artifact), "--host", "0.0.0.0", "--token", "t0k"])
    assert result.exit_code == 0, result.output
    here = reachable_address("0.0.0.0")
    link = f"http://{here}:8000/?token=t0k"
    assert f"on a phone: {link}" in result.output
    assert address_qr(link) in result.output  # the same address, drawn for a phone's camera
    assert address_qr(link).count("\n") > 10 and "█" in address_qr(link)
    assert reachable_address("127.0.0.1") == "127.0.0.1"


def test_the_images_of_one_request_share_a_pixel_budget_read_from_their_headers(served) -> None:
    predictor, data = served
    images = [("files", (f"{i}.png", p.read_bytes(), "image/png")) for i, p in
              enumerate(sorted((data / "disc").iterdir())[:4])]  # fmt: skip
    width, height = Image.open(sorted((data / "disc").iterdir())[0]).size
    settings = ServeSettings(max_request_pixels=3 * width * height)
    with TestClient(create_app(predictor, settings)) as http:
        refused = http.post("/predict", files=images)
        assert refused.status_code == 413
        assert (
            f"the 4 images hold {4 * width * height:,} pixels, over the limit of" in refused.json()["detail"]
        )
        assert http.post("/predict", files=images[:3]).status_code == 200


@pytest.mark.parametrize(
    ("speed", "given", "waiting"),
    [(100.0, None, 256), (1.0, None, 15), (0.1, None, 8), (100.0, 5, 5)],
)
def test_the_queue_is_sized_from_the_models_speed_unless_given(speed, given, waiting) -> None:
    sized, line = ServeSettings(max_waiting=given, timeout_s=60.0).sized(speed)
    assert sized.max_waiting == waiting
    assert f"{waiting} waiting" in line and "--max-waiting" in line


def test_slow_headers_close_the_connection_and_a_slow_body_gets_408(served) -> None:
    """Slowloris: headers that never finish are cut off at the deadline, a body that trickles gets
    408, and a keep-alive client that asks promptly is served request after request."""
    import socket

    from imgclf.serve.connections import deadline_protocol

    predictor, _ = served
    app = create_app(predictor, ServeSettings(read_timeout_s=1.0))
    with served_at(app, http=deadline_protocol(1.0)) as port:
        slow = socket.create_connection(("127.0.0.1", port), timeout=10)
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
        start = time.monotonic()
        assert slow.recv(100) == b""  # closed by the server
        waited = time.monotonic() - start
        silent = socket.create_connection(("127.0.0.1", port), timeout=10)  # opens and sends nothing
        assert silent.recv(100) == b""

        body = socket.create_connection(("127.0.0.1", port), timeout=10)
        body.sendall(
            b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
            b"Content-Length: 1000\r\n\r\n--x\r\n"
        )
        answer = b""
        while b"arrive" not in answer and (chunk := body.recv(1000)):
            answer += chunk

        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:  # one connection, kept alive
            statuses = []
            for _ in range(3):
                statuses.append(http.get("/health").status_code)
                time.sleep(0.6)  # idle between requests, more than half the deadline each time
    assert 0.8 < waited < 5
    assert answer.startswith(b"HTTP/1.1 408") and b"took over 1 s to arrive" in answer
    assert statuses == [200, 200, 200]


def test_large_images_take_their_own_lane_and_bodies_share_a_memory_budget(served) -> None:
    """A request of large PNGs waits in the large-image lane, not in /predict's slots: with that lane
    full it gets 503 while an ordinary photo is answered; and once the bodies held reach the memory
    budget, the next body gets 503 before it is read, and /health says so."""
    import asyncio

    predictor, data = served
    photo = sorted((data / "disc").iterdir())[0].read_bytes()
    large = png_bytes(Image.new("RGBA", (3000, 3000), (10, 200, 30, 128)))  # 34 MiB decoded, 40 KB sent
    app = create_app(predictor, ServeSettings(max_body_mb=2.0, max_held_mb=3.0, max_active=2, max_waiting=0))
    _, _, large_gate = app.state.gates
    held = app.state.held

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            answered = await http.post("/predict", files={"files": ("big.png", large, "image/png")})
            assert answered.status_code == 200, answered.text  # the lane is free: served
            large_gate.active, large_gate.waiting = 1, 2  # one decoding, two waiting
            refused = await http.post("/predict", files={"files": ("big.png", large, "image/png")})
            assert refused.status_code == 503 and "large images" in refused.json()["detail"]
            ordinary = await http.post("/predict", files={"files": ("a.png", photo, "image/png")})
            assert ordinary.status_code == 200
            health = (await http.get("/health")).json()
            assert health["status"] == "overloaded" and health["large_waiting"] == 2
            large_gate.active = large_gate.waiting = 0
            held.held = 2_500_000  # bodies of other requests, read and waiting
            body = {"files": ("junk.png", b"\0" * 600_000, "image/png")}
            too_much = await http.post("/predict", files=body)
            assert too_much.status_code == 503 and "holds 2 MB of requests" in too_much.json()["detail"]
            health = (await http.get("/health")).json()
            assert health["ready"] is False and health["held_mb"] == 2.5
            held.held = 0
            assert (
                await http.post("/predict", files={"files": ("a.png", photo, "image/png")})
            ).status_code == 200

    asyncio.run(scenario())


def test_explanations_yield_to_predictions_while_they_have_requests() -> None:
    """Pacing: with /predict busy, an explanation waits until those before it took at most their
    share of the time; with /predict idle, it runs at once."""
    from imgclf.serve.app import Pacing

    busy = True
    pacing = Pacing(0.2, lambda: busy)
    with pacing.turn():
        time.sleep(0.1)  # an explanation of 0.1 s
    start = time.monotonic()
    with pacing.turn():
        waited = time.monotonic() - start
    assert 0.3 < waited < 1.0  # 0.1 s at a 20% share: 0.4 s before the next turn
    busy = False
    start = time.monotonic()
    with pacing.turn():
        assert time.monotonic() - start < 0.1


def test_a_client_that_leaves_mid_body_leaves_no_traceback(served, caplog) -> None:
    import logging
    import socket

    predictor, data = served
    photo = sorted((data / "disc").iterdir())[0].read_bytes()
    uvicorn_log = logging.getLogger("uvicorn.error")  # it does not propagate to the root logger
    with caplog.at_level(logging.WARNING), served_at(create_app(predictor)) as port:
        uvicorn_log.addHandler(caplog.handler)  # after uvicorn configured its logging
        for _ in range(3):
            gone = socket.create_connection(("127.0.0.1", port), timeout=10)
            gone.sendall(
                b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 100000\r\n\r\n"
                b'--x\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n' + photo[:100]
            )
            gone.close()
        time.sleep(0.5)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            assert http.post("/predict", files={"files": ("a.png", photo, "image/png")}).status_code == 200
    uvicorn_log.removeHandler(caplog.handler)
    logged = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in logged if "Exception in ASGI application" in r.getMessage() or r.exc_info]
    assert not [r for r in logged if "Unclosed file" in r.getMessage()]


def test_other_sites_cannot_post_and_no_page_can_frame_it(served) -> None:
    from imgclf.serve import Access

    predictor, data = served
    files = {"files": ("a.png", sorted((data / "disc").iterdir())[0].read_bytes(), "image/png")}
    app = create_app(predictor, access=Access(loopback_only=True))
    with TestClient(app, base_url="http://127.0.0.1:8000") as http:
        own = http.post("/predict", files=files, headers={"Origin": "http://127.0.0.1:8000"})
        assert own.status_code == 200  # the page's own requests
        assert http.post("/predict", files=files).status_code == 200  # scripts send no Origin
        for foreign in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                        {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}):  # fmt: skip
            refused = http.post("/predict", files=files, headers=foreign)
            assert refused.status_code == 403 and "another web site" in refused.json()["detail"], foreign
        cross_site_read = http.get("/model", headers={"Sec-Fetch-Site": "cross-site"})
        assert cross_site_read.status_code == 200  # a read changes nothing (and no CORS lets it be read)
        for answer in (http.get("/"), refused, http.get("/model", headers={"Host": "evil.example"})):
            assert answer.headers["x-frame-options"] == "DENY"
            assert answer.headers["content-security-policy"] == "frame-ancestors 'none'"
            assert answer.headers["referrer-policy"] == "no-referrer"


def test_the_access_log_names_each_request_without_its_token(served, caplog) -> None:
    from imgclf.serve import Access

    predictor, _ = served
    access = Access(token="s3cret-token", log_requests=True)
    app = create_app(predictor, access=access)
    with caplog.at_level("INFO", logger="imgclf.serve.access"), TestClient(app) as http:
        assert http.get("/model", params={"token": "s3cret-token", "x": "1"}).status_code == 200
        assert http.get("/model").status_code == 401
    lines = [record.getMessage() for record in caplog.records if record.name == "imgclf.serve.access"]
    assert len(lines) == 2 and '"GET /model?token=…&x=1 HTTP/1.1" 200' in lines[0], lines
    assert '"GET /model HTTP/1.1" 401' in lines[1] and "s3cret" not in caplog.text


def test_decoding_has_a_time_budget_and_no_decoder_walks_every_page(served, monkeypatch) -> None:
    from PIL import TiffImagePlugin

    predictor, _ = served
    pixels = np.random.default_rng(0).integers(0, 256, (2500, 2500, 3), dtype=np.uint8)
    big = png_bytes(Image.fromarray(pixels))  # about 0.1 s to decode
    settings = ServeSettings(decode_timeout_s=0.005)
    with TestClient(create_app(predictor, settings)) as http:
        answer = http.post("/predict", files={"files": ("big.png", big, "image/png")})
        assert answer.status_code == 413 and "took over 0.005 s" in answer.json()["detail"]
        health = http.get("/health").json()
        assert health["predict_active"] == 0 and health["large_active"] == 0  # the worker is free
    seeks = []
    original = TiffImagePlugin.TiffImageFile._seek

    def counted(self, frame: int) -> None:
        seeks.append(frame)
        original(self, frame)

    monkeypatch.setattr(TiffImagePlugin.TiffImageFile, "_seek", counted)
    with TestClient(create_app(predictor)) as http:
        frames = [Image.new("L", (1, 1), i % 256) for i in range(500)]
        tiff = io.BytesIO()
        frames[0].save(tiff, format="TIFF", save_all=True, append_images=frames[1:])
        pages = http.post("/predict", files={"files": ("pages.tif", tiff.getvalue(), "image/tiff")})
        assert pages.status_code == 200 and max(seeks, default=0) == 0  # the first page, no other looked at
