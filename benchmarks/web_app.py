"""The phone app (`imgclf export --format web`) measured in headless Chromium on this machine, beside
`imgclf predict` (ONNX Runtime in Python) on the same model file, for each run given:

    python benchmarks/web_app.py RUN [RUN ...] [--images 100]

For each run, float and int8 (where int8 passes its check):
- the app folder's size and its model file's;
- time to the first prediction after a cold load (a new browser profile, the app from a local static
  server) and after an offline reload (the service worker's cache, the network cut);
- milliseconds per image in the browser with one and two WebAssembly threads (decode + preprocess
  + model, and the model alone), beside ONNX Runtime in Python on the same file with one and two
  threads (the model alone, batch 1);
- on the run's validation images: top-1 agreement and the largest probability difference against
  `imgclf predict` on the same file, and the largest difference between the browser's input tensor
  and Python's (in 0–255 levels), with the number of images where it is not zero and why;
- the same on phone-sized JPEGs made from validation photos (5× larger, every other one stored on
  its side with an EXIF orientation tag), where Pillow decodes in libjpeg's DCT domain at a fraction
  of the size and the browser decodes whole and box-averages (`--large-jpegs N`).

The static server sends COOP/COEP headers so that the page may use threads from its first load.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))

from common import describe_machine  # noqa: E402

from conftest import app_in_chromium, open_app, static_folder  # noqa: E402

PREDICT = """async (bytes) => {
  const top = await window.imgclf.predict(new Blob([new Uint8Array(bytes)]));
  return {top, ms: window.imgclf.last.ms, notes: window.imgclf.last.notes};
}"""
INPUT = "async (bytes) => await window.imgclf.input(new Blob([new Uint8Array(bytes)]))"


ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}


def validation_images(run: Path, count: int) -> list[Path]:
    from imgclf.artifact import load_model_info
    from imgclf.data.sources import scan_source
    from imgclf.data.split import apply_manifest

    info = load_model_info(run / "model")
    image_set, splits = apply_manifest(scan_source(info.dataset["source"]), run / "manifest.csv")
    chosen = np.flatnonzero(splits == "val")[:count]
    return [Path(image_set.location(int(i))) for i in chosen]


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def python_ms(model: Path, inputs: np.ndarray, threads: int) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for image in inputs[:3]:
        session.run(None, {name: image[None]})
    times = []
    for image in inputs:
        started = time.perf_counter()
        session.run(None, {name: image[None]})
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def browser_side(app: Path, images: list[Path], chromium: str, flags: list[str]) -> dict:
    from playwright.sync_api import sync_playwright

    found: dict = {}
    contents = [list(p.read_bytes()) for p in images]
    with static_folder(app, ISOLATION) as address, sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, headless=True, args=flags)
        try:
            for threads in (1, 2):
                context = browser.new_context()  # a new profile: nothing cached
                page = context.new_page()
                started = time.perf_counter()
                open_app(page, f"{address}?threads={threads}")
                page.evaluate(PREDICT, contents[0])
                cold = time.perf_counter() - started
                page.evaluate("window.imgclf.offline")
                context.set_offline(True)
                started = time.perf_counter()
                open_app(page, f"{address}?threads={threads}")
                page.evaluate(PREDICT, contents[0])
                offline = time.perf_counter() - started
                assert page.evaluate("window.imgclf.info.threads") == threads
                answers = [page.evaluate(PREDICT, content) for content in contents]
                found[threads] = {
                    "cold_s": cold,
                    "offline_s": offline,
                    "total_ms": statistics.median(sum(a["ms"].values()) for a in answers),
                    "model_ms": statistics.median(a["ms"]["model"] for a in answers),
                    "answers": answers,
                }
                if threads == 1:
                    found["inputs"] = [page.evaluate(INPUT, content) for content in contents]
                context.close()
        finally:
            browser.close()
    return found


def large_jpegs(images: list[Path], count: int, scale: int = 5) -> list[bytes]:
    """Phone-sized JPEGs made from the first photos (scaled up `scale` times), every other one stored
    on its side with an EXIF tag that turns it upright, as phones write them."""
    import io

    from PIL import Image

    made = []
    for index, path in enumerate(images[:count]):
        image = Image.open(path).convert("RGB")
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        if index % 2:
            exif = Image.Exif()
            exif[0x0112] = 6  # stored turned left: shown turned 90° clockwise
            image.transpose(Image.Transpose.ROTATE_90).save(buffer, "JPEG", quality=92, exif=exif.tobytes())
        else:
            image.save(buffer, "JPEG", quality=92)
        made.append(buffer.getvalue())
    return made


def large_side(app: Path, contents: list[bytes], flags: list[str]) -> list[tuple[dict, dict]]:
    with app_in_chromium(app, flags) as page:
        return [(page.evaluate(PREDICT, list(c)), page.evaluate(INPUT, list(c))) for c in contents]


def measure(
    run: Path, quantize: str, count: int, large: int, chromium: str, flags: list[str], work: Path
) -> None:
    from imgclf.data.preprocess import load_prepared
    from imgclf.errors import ImgclfError
    from imgclf.export.exporter import export_model
    from imgclf.inference.predictor import Predictor

    app = work / f"{run.name}-{quantize}"
    try:
        result = export_model(run, app, format="web", quantize=quantize)
    except ImgclfError as error:
        print(f"{run.name} {quantize}: not exported: {error}")
        return
    model = app / "model.onnx"
    images = validation_images(run, count)
    predictor = Predictor.from_path(model)  # what `imgclf predict` runs on this file
    expected = predictor.predict([str(p) for p in images], top_k=3)
    spec = predictor.spec
    prepared = np.stack([load_prepared(p, spec) for p in images]).transpose(0, 3, 1, 2)
    prepared = np.ascontiguousarray(prepared.astype(np.float32) / 255.0)
    browser = browser_side(app, images, chromium, flags)
    agree, worst = 0, 0.0
    for want, got in zip(expected, browser[1]["answers"]):
        agree += got["top"][0]["class"] == want.labels[0]
        mine = {e["class"]: e["probability"] for e in got["top"]}
        worst = max(worst, *(abs(mine.get(c, 0.0) - p) for c, p in zip(want.labels, want.probabilities)))
    differences = [
        float(np.abs(np.array(got["data"], np.float32).reshape(got["shape"]) - want).max()) * 255
        for got, want in zip(browser["inputs"], prepared)
    ]
    notes = sorted({note for got in browser["inputs"] for note in got["notes"]})
    print(
        f"\n{run.name}, {quantize} ({'int8' if result.quantize == 'int8' else 'float'} model): "
        f"app {folder_size(app) / 1e6:.1f} MB, model {model.stat().st_size / 1e6:.2f} MB"
    )
    print(
        f"  first prediction: cold load {browser[1]['cold_s']:.2f} s, offline reload "
        f"{browser[1]['offline_s']:.2f} s (1 thread); {browser[2]['cold_s']:.2f} s / "
        f"{browser[2]['offline_s']:.2f} s (2 threads)"
    )
    for threads in (1, 2):
        print(
            f"  {threads} thread{'s' if threads > 1 else ' '}: "
            f"browser {browser[threads]['total_ms']:.1f} ms/image "
            f"(model {browser[threads]['model_ms']:.1f} ms); ONNX Runtime in Python (model) "
            f"{python_ms(model, prepared, threads):.1f} ms"
        )
    print(
        f"  vs imgclf predict on {len(images)} val images: top-1 agreement {agree}/{len(images)}, "
        f"largest |Δp| {worst:.2e}; input tensor: largest difference {max(differences):.0f} levels, "
        f"{sum(d > 0 for d in differences)} images differ{' (' + '; '.join(notes) + ')' if notes else ''}"
    )
    if large:
        contents = large_jpegs(images, large)
        answers = large_side(app, contents, flags)
        want = predictor.predict([np.asarray(load_prepared(c, spec)) for c in contents], top_k=3)
        agree = sum(a["top"][0]["class"] == w.labels[0] for (a, _), w in zip(answers, want))
        gaps = [
            np.abs(
                np.array(i["data"], np.float32).reshape(i["shape"]) * 255
                - load_prepared(c, spec).transpose(2, 0, 1)
            )
            for (_, i), c in zip(answers, contents)
        ]
        worst = max(
            abs({e["class"]: e["probability"] for e in a["top"]}.get(label, 0.0) - p)
            for (a, _), w in zip(answers, want)
            for label, p in zip(w.labels, w.probabilities)
        )
        notes = sorted({note for a, _ in answers for note in a["notes"]})
        print(
            f"  {len(contents)} phone-sized JPEGs ({len(contents) // 2} turned by EXIF): top-1 agreement "
            f"{agree}/{len(contents)}, largest |Δp| {worst:.3f}; input: largest difference "
            f"{max(g.max() for g in gaps):.0f} levels, mean {np.mean([g.mean() for g in gaps]):.2f} "
            f"({'; '.join(notes)})"
        )


def main() -> None:
    from conftest import CHROMIUM, CHROMIUM_FLAGS

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (holding model/ and manifest.csv)")
    parser.add_argument("--images", type=int, default=100, help="validation images per run")
    parser.add_argument(
        "--large-jpegs", type=int, default=20, help="phone-sized JPEGs made from validation photos"
    )
    args = parser.parse_args()
    if CHROMIUM is None:
        sys.exit("needs Chromium (apt-get install chromium)")
    print(describe_machine())
    with tempfile.TemporaryDirectory(prefix="imgclf-web-bench-") as work:
        for run in args.runs:
            for quantize in ("none", "int8"):
                measure(
                    run.resolve(),
                    quantize,
                    args.images,
                    args.large_jpegs,
                    CHROMIUM,
                    CHROMIUM_FLAGS,
                    Path(work),
                )


if __name__ == "__main__":
    main()
