"""`imgclf export --format web`: the phone app, its preprocessing pinned to Python's, and the app in a
real browser (Debian's Chromium through Playwright, kept off the network), loaded from a static
server, then offline, answering as `imgclf predict` on the same model file."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    app_in_chromium,
    open_app,
    served_at,
    shape_image,
    static_folder,
)
from imgclf.artifact import load_model_info, update_artifact_info
from imgclf.data.decode import reduce_for
from imgclf.data.preprocess import PreprocessSpec, load_prepared, prepare_image
from imgclf.errors import UsageError
from imgclf.export.exporter import export_model
from imgclf.export.formats import web
from imgclf.inference.predictor import Predictor
from imgclf.serve import ServeSettings, create_app
from imgclf.serve.access import PRIVATE_APP_PATHS, Access

NODE = shutil.which("node")
APP_JS = Path(web.__file__).parents[1] / "web_app"
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (see .ci/run)")


@pytest.fixture(scope="module")
def web_app(shapes_model, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The shapes model (a copy) exported as a phone app: (app folder, artifact folder, data)."""
    artifact, data = shapes_model
    copy = tmp_path_factory.mktemp("web") / "model"
    shutil.copytree(artifact, copy)
    result = export_model(copy, format="web")
    assert result.path == copy / "web"
    return result.path, copy, data


def test_the_app_folder_holds_the_page_the_runtime_and_the_checked_model(web_app) -> None:
    folder, _, _ = web_app
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {"index.html", "app.js", "preprocess.js", "sw.js", "manifest.webmanifest", "model.onnx"} <= names
    assert {"model.json", "README.txt", "icon-192.png", "vendor/onnxruntime-web/LICENSE"} <= names
    assert "vendor/onnxruntime-web/ort-wasm-simd-threaded.wasm" in names
    config = json.loads((folder / "model.json").read_text())
    assert config["format"] == web.MARKER and config["classes"] == ["cross", "disc", "square"]
    assert config["display_names"] == ["Cross", "Disc", "Square"]
    assert config["preprocessing"]["height"] == 32 and config["task"] == "single-label"
    # auto: int8 where its check passes; the model in the app is the graph that passed it
    assert config["model_bytes"] == (folder / "model.onnx").stat().st_size
    metadata = web.graph_metadata((folder / "model.onnx").read_bytes())
    assert metadata["imgclf.classes"] == json.dumps(config["classes"])
    assert config["quantization"] == metadata.get("imgclf.quantization", "none (float32)")
    # the service worker caches every file but itself, under a name that changes with any file
    worker = (folder / "sw.js").read_text()
    assert "__BUILD__" not in worker and "__FILES__" not in worker
    listed = json.loads(worker.split("const FILES = ", 1)[1].split(";", 1)[0])
    assert set(listed) == (names - {"sw.js"}) | {"./"}
    version = json.loads((folder / "vendor/onnxruntime-web/VERSION.json").read_text())
    assert version["package"] == "onnxruntime-web" and version["version"] == web.runtime_version()
    # nothing in the app's own files names another origin
    for name in (*web.APP_FILES, "sw.js"):
        text = (folder / name).read_text()
        assert "http://" not in text and "https://" not in text, name


def test_an_export_replaces_its_own_app_and_never_a_users_folder(web_app, tmp_path: Path) -> None:
    _, artifact, _ = web_app
    user = tmp_path / "photos"
    user.mkdir()
    (user / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(UsageError, match="other files"):
        export_model(artifact, user, format="web", quantize="none")
    assert [p.name for p in user.iterdir()] == ["holiday.jpg"]
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    with pytest.raises(UsageError, match="is a file"):
        export_model(artifact, a_file, format="web", quantize="none")
    target = tmp_path / "app"
    first = export_model(artifact, target, format="web", quantize="none")
    (target / "stale.txt").write_text("from an older app")
    second = export_model(artifact, target, format="web", quantize="none")
    assert not (target / "stale.txt").exists() and first.size_bytes == second.size_bytes
    assert "int8" not in json.loads((target / "model.json").read_text())["quantization"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no half-written folder left


def test_serve_serves_the_app_at_app_with_its_model_behind_the_token(web_app) -> None:
    folder, artifact, _ = web_app
    files, line = web.served_app(artifact)
    assert files is not None and str(folder) in line
    assert files["model.onnx"] == (folder / "model.onnx").read_bytes()
    assert {f"/app/{name}" for name in web.PRIVATE_FILES} == PRIVATE_APP_PATHS
    predictor = Predictor.from_path(artifact)
    app = create_app(predictor, ServeSettings(), Access(token="s3cret"), files, line)
    with TestClient(app) as client:
        page = client.get("/app/")
        assert page.status_code == 200 and page.text == (folder / "index.html").read_text()
        assert page.headers["cross-origin-embedder-policy"] == "require-corp"
        assert page.headers["cross-origin-opener-policy"] == "same-origin"
        wasm = client.get("/app/vendor/onnxruntime-web/ort-wasm-simd-threaded.wasm")
        assert wasm.status_code == 200 and wasm.headers["content-type"] == "application/wasm"
        assert client.get("/app/model.onnx").status_code == 401
        assert client.get("/app/model.json").status_code == 401
        model = client.get("/app/model.onnx", headers={"Authorization": "Bearer s3cret"})
        assert model.status_code == 200 and model.content == files["model.onnx"]
        assert client.get("/app/../model/imgclf.json").status_code in (401, 404)
        assert client.get("/app/nothing.js").status_code == 404
        assert client.get("/app", follow_redirects=False).headers["location"] == "/app/"
    # a model without an export: the app is built around its current model.onnx, else none
    bare = folder.parent / "bare"
    shutil.copytree(artifact, bare, ignore=shutil.ignore_patterns("web", "model.onnx"))
    files, line = web.served_app(bare)
    assert files is None and "--format web" in line
    export_model(bare)
    files, line = web.served_app(bare)
    assert files is not None and "model.onnx" in line
    assert "int8" not in json.loads(files["model.json"])["quantization"]
    # `imgclf calibrate` changes the temperature, not the weights: an app (or model.onnx) that bakes
    # the older one in is not served, as predict does not run such a model.onnx
    stale = folder.parent / "recalibrated"
    shutil.copytree(artifact, stale)
    info = load_model_info(stale)
    info.calibration = {**(info.calibration or {}), "temperature": 2.5}
    update_artifact_info(stale, info)
    files, line = web.served_app(stale)
    assert files is None and "--format web" in line
    export_model(stale, format="web", out=stale / "web")
    files, line = web.served_app(stale)
    assert files is not None and str(stale / "web") in line


# --- the preprocessing, pinned to Python's -------------------------------------------------------

RUNNER = """
import { readFileSync, writeFileSync } from "node:fs";
import { prepare } from "%s";
const cases = JSON.parse(readFileSync(process.argv[2], "utf8"));
const raw = readFileSync(process.argv[3]);
const out = [];
for (const c of cases) {
  const rgba = new Uint8ClampedArray(raw.buffer, raw.byteOffset + c.offset, c.width * c.height * 4);
  out.push(Buffer.from(prepare(rgba, c.width, c.height, c.stored, c.spec).input.buffer));
}
writeFileSync(process.argv[4], Buffer.concat(out));
"""


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed")
def test_preprocess_js_gives_exactly_pillows_pixels(tmp_path: Path) -> None:
    """Random photos-like images (noise and smooth), every resize policy and interpolation, grey and
    RGB, sizes that take Pillow's reduce and reducing_gap paths: the browser's module gives the
    model's input to the last bit (PNG path: no JPEG DCT scaling)."""
    from PIL import ImageFilter

    rng = np.random.default_rng(7)
    cases, blobs, expected = [], [], []
    offset = 0
    for trial in range(48):
        width, height = (int(v) for v in rng.integers(5, 700, 2))
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        if trial % 2:
            image = image.filter(ImageFilter.GaussianBlur(3))
        spec = PreprocessSpec(
            int(rng.integers(8, 260)),
            int(rng.integers(8, 260)),
            int(rng.choice([1, 3])),
            str(rng.choice(["stretch", "crop", "pad"])),
            str(rng.choice(["nearest", "bilinear", "bicubic", "lanczos"])),
        )
        expected.append(prepare_image(reduce_for(image, (spec.width, spec.height)), spec))
        rgba = np.asarray(image.convert("RGBA")).tobytes()
        cases.append(
            {"width": width, "height": height, "offset": offset, "stored": None, "spec": spec.to_dict()}
        )
        blobs.append(rgba)
        offset += len(rgba)
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    (tmp_path / "pixels.bin").write_bytes(b"".join(blobs))
    (tmp_path / "run.mjs").write_text(RUNNER % (APP_JS / "preprocess.js").as_uri())
    subprocess.run(
        [NODE, str(tmp_path / "run.mjs"), str(tmp_path / "cases.json"), str(tmp_path / "pixels.bin"),
         str(tmp_path / "out.bin")],
        check=True, timeout=300,
    )  # fmt: skip
    got = np.frombuffer((tmp_path / "out.bin").read_bytes(), dtype=np.float32)
    at = 0
    for case, want in zip(cases, expected):
        spec = case["spec"]
        size = spec["channels"] * spec["height"] * spec["width"]
        mine = got[at : at + size].reshape(spec["channels"], spec["height"], spec["width"]).transpose(1, 2, 0)
        at += size
        assert np.array_equal(mine, want.astype(np.float32) / 255.0), case


# --- the app in Chromium ---------------------------------------------------------------------------


def sample_images(data: Path) -> list[Path]:
    return sorted(p for p in data.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[::4]


PREDICT = """async (bytes) => {
  const top = await window.imgclf.predict(new Blob([new Uint8Array(bytes)]));
  return {top, notes: window.imgclf.last.notes};
}"""
INPUT = "async (bytes) => await window.imgclf.input(new Blob([new Uint8Array(bytes)]))"


def jpeg_bytes(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, **options)
    return buffer.getvalue()


@needs_chromium
def test_the_app_answers_as_imgclf_predict_offline_in_chromium(web_app, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    folder, _, data = web_app
    images = sample_images(data)
    predictor = Predictor.from_path(folder / "model.onnx")  # what `imgclf predict` runs on this file
    expected = predictor.predict([str(p) for p in images], top_k=3)
    foreign: list[str] = []
    with static_folder(folder) as address, sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context()
            context.on("request", lambda r: foreign.append(r.url) if not r.url.startswith(address) else None)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            open_app(page, address)
            assert page.evaluate("window.imgclf.offline") is True  # every file is in the cache
            context.set_offline(True)
            open_app(page, address)
            info = page.evaluate("window.imgclf.info")
            assert info["crossOriginIsolated"] is True  # the service worker's headers: threads
            for path, want in zip(images, expected):
                got = page.evaluate(PREDICT, list(path.read_bytes()))
                assert got["top"][0]["class"] == want.labels[0], path
                assert [entry["name"] for entry in got["top"]] == want.names
                difference = np.abs(np.array([e["probability"] for e in got["top"]]) - want.probabilities)
                assert difference.max() < 0.01, (path, difference)
                assert got["notes"] == []
            # the model's input itself, for a PNG, a small JPEG and a JPEG turned by its EXIF tag
            photo = shape_image(2, size=90, mode="RGB").resize((90, 60))
            exif = Image.Exif()
            exif[0x0112] = 6  # rotate 90° clockwise to show
            cases = {
                "png": images[0].read_bytes(),
                "jpeg": jpeg_bytes(photo),
                "jpeg-exif": jpeg_bytes(photo, exif=exif.tobytes()),
            }
            spec = predictor.spec
            for name, content in cases.items():
                got = page.evaluate(INPUT, list(content))
                want = load_prepared(content, spec).transpose(2, 0, 1).astype(np.float32) / 255.0
                mine = np.array(got["data"], dtype=np.float32).reshape(got["shape"])
                assert np.abs(mine - want).max() == 0.0, name
            # a file that is not an image: a clear message, and the app goes on
            message = page.evaluate(
                "async () => { try { await window.imgclf.predict(new Blob([new Uint8Array([1,2,3])])); }"
                " catch (error) { return error.message; } }"
            )
            assert "cannot decode" in message
            # a PNG whose header claims 20000×20000 pixels is refused before a pixel is decoded
            bomb = bytearray(png_bytes(Image.new("RGB", (8, 8))))
            bomb[16:24] = (20000).to_bytes(4, "big") * 2
            message = page.evaluate(
                "async (b) => { try { await window.imgclf.predict(new Blob([new Uint8Array(b)])); }"
                " catch (error) { return error.message; } }",
                list(bomb),
            )
            assert message.startswith("image too large: 20000×20000 pixels")
            assert errors == []
        finally:
            browser.close()
    assert foreign == []  # nothing from another origin


@needs_chromium
def test_serves_app_installs_with_its_token_and_then_runs_offline_in_chromium(web_app) -> None:
    """From `imgclf serve` with a token (loopback is a secure context, as HTTPS is): the page keeps
    the token, the service worker fetches the model with it, and the app reloads offline."""
    from playwright.sync_api import sync_playwright

    _, artifact, data = web_app
    files, line = web.served_app(artifact)
    app = create_app(Predictor.from_path(artifact), ServeSettings(), Access(token="s3cret"), files, line)
    image = sample_images(data)[0].read_bytes()
    with served_at(app) as port, sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context()
            page = context.new_page()
            open_app(page, f"http://127.0.0.1:{port}/app/?token=s3cret")
            assert "token" not in page.url  # dropped from the address bar, kept by the page
            assert page.evaluate("window.imgclf.offline") is True
            online = page.evaluate(PREDICT, list(image))["top"]
            context.set_offline(True)
            open_app(page, f"http://127.0.0.1:{port}/app/")
            assert page.evaluate(PREDICT, list(image))["top"] == online
        finally:
            browser.close()


@needs_chromium
def test_the_apps_camera_classifies_a_frame_in_chromium(web_app, tmp_path: Path) -> None:
    """Chromium's fake camera plays a still picture: Live camera, then Classify frame, shows an answer."""

    folder, _, _ = web_app
    frame = np.asarray(shape_image(0, size=64, mode="RGB").convert("YCbCr"))
    y4m = tmp_path / "camera.y4m"
    planes = [frame[:, :, 0].tobytes(), frame[::2, ::2, 1].tobytes(), frame[::2, ::2, 2].tobytes()]
    y4m.write_bytes(b"YUV4MPEG2 W64 H64 F10:1 Ip A1:1 C420jpeg\n" + b"FRAME\n" + b"".join(planes))
    flags = [
        *CHROMIUM_FLAGS,
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={y4m}",
    ]
    with app_in_chromium(folder, flags) as page:
        page.click("#camera")
        page.wait_for_function("!document.getElementById('capture').disabled")
        page.click("#capture")
        page.wait_for_function("document.querySelectorAll('#results li').length > 0", timeout=30_000)
        assert page.evaluate("window.imgclf.last.size") == [64, 64]
        shown = page.inner_text("#results")
        assert any(name in shown for name in ("Cross", "Disc", "Square"))


@needs_chromium
def test_the_app_answers_unknown_as_imgclf_predict_does_in_chromium(unknown_model, tmp_path: Path) -> None:
    """A model trained with --min-precision: the app applies its unknown rule (confidence, and the
    likeness to the training images from the graph's extra outputs) as predict does."""

    run, data = unknown_model
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    folder = export_model(copy, tmp_path / "app", format="web", quantize="none").path
    config = json.loads((folder / "model.json").read_text())
    assert config["unknown"]["confidence"] > 0 and config["likeness_outputs"] == ["similarity", "distance"]
    rng = np.random.default_rng(3)
    inputs = {p.name: p.read_bytes() for p in sample_images(data)[:6]}
    for index in range(4):  # noise and stripes: nothing like the training shapes
        noise = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
        inputs[f"noise{index}.png"] = png_bytes(noise if index % 2 else shape_image(3, 40, rng, "RGB"))
    predictor = Predictor.from_path(folder / "model.onnx")
    expected = {
        name: predictor.predict(Image.open(io.BytesIO(content)), top_k=3)[0]
        for name, content in inputs.items()
    }
    assert any(p.unknown for p in expected.values()) and not all(p.unknown for p in expected.values())
    with app_in_chromium(folder) as page:
        for name, content in inputs.items():
            top = page.evaluate(PREDICT, list(content))["top"]
            assert top[0]["class"] == expected[name].labels[0], name
            assert bool(top[0].get("unknown")) == bool(expected[name].unknown), (name, top[0])


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_serve_prints_the_apps_address_and_speaks_https_with_a_certificate(
    web_app, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn
    from typer.testing import CliRunner

    from imgclf.cli import app
    from imgclf.serve.access import reachable_address

    _, artifact, _ = web_app
    monkeypatch.delenv("IMGCLF_TOKEN", raising=False)
    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda application, **kwargs: calls.append(kwargs))
    runner = CliRunner()
    result = runner.invoke(app, ["serve", str(artifact), "--host", "0.0.0.0", "--token", "t0k"])
    assert result.exit_code == 0, result.output
    here = reachable_address("0.0.0.0")
    assert f"the phone app on a phone: http://{here}:8000/app/?token=t0k" in result.output
    assert "offline use only from HTTPS" in result.output
    assert calls[-1]["ssl_certfile"] is None
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    half = runner.invoke(app, ["serve", str(artifact), "--ssl-certfile", str(cert)])
    assert half.exit_code == 2 and "--ssl-certfile and --ssl-keyfile go together" in half.output
    missing = runner.invoke(
        app, ["serve", str(artifact), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
    )
    assert missing.exit_code == 2 and "no such file" in missing.output
    cert.write_text("certificate"), key.write_text("key")  # uvicorn reads them; here it is stubbed
    secure = runner.invoke(
        app, ["serve", str(artifact), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
    )
    assert secure.exit_code == 0, secure.output
    assert "https://127.0.0.1:8000/app/ (the phone app in" in secure.output
    assert (calls[-1]["ssl_certfile"], calls[-1]["ssl_keyfile"]) == (str(cert), str(key))


def test_auto_quantization_falls_back_to_the_float_model_when_int8_fails_its_check(
    unknown_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--quantize auto: this run's int8 graph is made (the run has its manifest) and fails its check:
    the app carries the float graph, and says why. The check is made to need more than full agreement:
    this run's int8 graph agrees on 35 or 36 of its 36 check images, depending on the tests run
    before it, so the real 99% would make the outcome depend on one image."""
    import onnx

    import imgclf.export.quantize

    monkeypatch.setattr(imgclf.export.quantize, "MIN_AGREEMENT", 1.01)
    run, _ = unknown_model
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    result = export_model(copy, tmp_path / "app", format="web")
    assert result.quantize == "none" and result.quantization is None
    reason = next(line for line in result.check_lines if line.startswith("int8 not used, the float model"))
    assert "does not answer as the float model does" in reason  # the check ran and refused it
    graph = onnx.load(str(tmp_path / "app" / "model.onnx"))
    assert not [node for node in graph.graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert json.loads((tmp_path / "app" / "model.json").read_text())["quantization"] == "none (float32)"
