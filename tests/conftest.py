"""Shared fixtures: realistic generated image datasets in tmp_path, and the real shared datasets."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

REPO_ROOT = Path(__file__).resolve().parents[1]
# Debian's headless Chromium (installed by .ci/run) for the browser tests, kept off the network.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own imgclf cache folder (archives are unpacked there) and its own working
    directory, so that default outputs (runs/…) never land in the repository."""
    cache = tmp_path_factory.mktemp("imgclf-cache")
    monkeypatch.setenv("IMGCLF_CACHE_DIR", str(cache))
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    return cache


@pytest.fixture(scope="session")
def shapes_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The model the tests that only need one share (export, serve): a small CNN trained once on RGB
    shapes, with display names and ImageNet normalization. Returns (artifact folder, data folder);
    copy the artifact before changing it."""
    import imgclf

    root = tmp_path_factory.mktemp("shapes-model")
    data = write_class_folders(root / "data", ["square", "disc", "cross"], 24, size=28, mode="RGB")
    names = root / "names.json"
    names.write_text(json.dumps({"square": "Square", "disc": "Disc", "cross": "Cross"}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMGCLF_CACHE_DIR", str(root / "cache"))
        run = imgclf.train(
            data,
            model="cnn-small",
            epochs=2,
            batch_size=16,
            image_size=[32, 32],
            normalize="imagenet",
            label_map=str(names),
            seed=1,
            project=str(root / "runs"),
        )
    return run.artifact, data


@pytest.fixture(scope="session")
def unknown_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small CNN trained once on RGB shapes (square, disc, cross) with --min-precision 0.95: it
    answers `unknown` (see imgclf.inference.unknown). Returns (run folder, data folder); copy the run
    before changing it."""
    import imgclf

    root = tmp_path_factory.mktemp("unknown-model")
    data = write_class_folders(root / "data", ["square", "disc", "cross"], 60, size=28, mode="RGB")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMGCLF_CACHE_DIR", str(root / "cache"))
        run = imgclf.train(
            data,
            model="cnn-small",
            epochs=4,
            batch_size=16,
            image_size=[32, 32],
            min_precision=0.95,
            seed=1,
            project=str(root / "runs"),
        )
    return run.run_dir, data


def shape_image(
    label: int, size: int = 24, rng: np.random.Generator | None = None, mode: str = "L"
) -> Image.Image:
    """A noisy picture of one of four shapes (class 0: square, 1: disc, 2: cross, 3: stripes)."""
    rng = rng or np.random.default_rng(label)
    image = Image.new("L", (size, size), color=int(rng.integers(0, 40)))
    draw = ImageDraw.Draw(image)
    jitter = int(rng.integers(-2, 3))
    low, high = size // 4 + jitter, 3 * size // 4 + jitter
    ink = int(rng.integers(180, 256))
    if label == 0:
        draw.rectangle([low, low, high, high], outline=ink, width=2)
    elif label == 1:
        draw.ellipse([low, low, high, high], fill=ink)
    elif label == 2:
        draw.line([low, low, high, high], fill=ink, width=3)
        draw.line([low, high, high, low], fill=ink, width=3)
    else:
        for x in range(1, size, 5):
            draw.line([x + jitter, 0, x + jitter, size], fill=ink, width=2)
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, 12, (size, size))
    image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), mode="L")
    return image.convert(mode) if mode != "L" else image


def write_class_folders(
    root: Path,
    classes: list[str],
    per_class: int,
    size: int = 24,
    suffix: str = ".png",
    seed: int = 0,
    mode: str = "L",
) -> Path:
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            shape_image(label % 4, size, rng, mode).save(folder / f"{name}_{index:03d}{suffix}")
    return root


@pytest.fixture
def shapes_dir(tmp_path: Path) -> Path:
    """Three classes × 40 grayscale PNGs of 24×24 px."""
    return write_class_folders(tmp_path / "shapes", ["square", "disc", "cross"], 40)


@pytest.fixture
def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS


UNUSUAL_MODES = (
    "1",
    "L",
    "LA",
    "P",
    "PA",
    "RGB",
    "RGBA",
    "CMYK",
    "YCbCr",
    "LAB",
    "HSV",
    "I",
    "I;16",
    "I;16B",
    "F",
)


def unusual_image(mode: str, rng: np.random.Generator, size: tuple[int, int] = (20, 16)) -> Image.Image:
    """A noisy picture in any Pillow mode (palette with transparency, CIELab, 16-bit, float …)."""
    width, height = size
    base = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    if mode == "P":
        image = base.convert("P")
        image.info["transparency"] = 3
        return image
    if mode in ("I", "I;16", "I;16B", "F"):
        values = rng.integers(0, 65535, (height, width))
        dtype = {"I": np.int32, "I;16": np.uint16, "I;16B": ">u2", "F": np.float32}[mode]
        return Image.frombytes(mode, size, values.astype(dtype).tobytes())
    if mode == "LAB":
        return Image.frombytes(
            "LAB", size, rng.integers(0, 256, (height, width, 3), dtype=np.uint8).tobytes()
        )
    return base.convert(mode)


def write_unusual_images(folder: Path, classes: tuple[str, ...] = ("a", "b")) -> list[Path]:
    """Every Pillow mode in every format Pillow (and pillow-heif) can save, multi-frame files, and files
    that are no images, spread over class folders. Returns every file written."""
    import warnings

    Image.init()
    extension_of: dict[str, str] = {}
    for extension, name in Image.registered_extensions().items():  # each format's first, as registered
        extension_of.setdefault(name, extension)
    extension_of.update({"HEIF": ".heic", "JPEG": ".jpg", "TIFF": ".tif", "PNG": ".png", "AVIF": ".avif"})
    rng = np.random.default_rng(0)
    written: list[Path] = []
    for folder_name in classes:
        (folder / folder_name).mkdir(parents=True, exist_ok=True)
    count = 0
    for image_format in sorted(set(Image.SAVE) | {"HEIF"}):
        for mode in UNUSUAL_MODES:
            image = unusual_image(mode, rng)
            path = (
                folder
                / classes[count % len(classes)]
                / f"{mode.replace(';', '_')}{extension_of.get(image_format, '.' + image_format.lower())}"
            )
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    image.save(path, format=image_format)
            except Exception:  # this format cannot hold this mode
                path.unlink(missing_ok=True)
                continue
            written.append(path)
            count += 1
    for image_format, extension in (("GIF", ".gif"), ("TIFF", ".tiff"), ("PNG", ".apng"), ("WEBP", ".webp")):
        frames = [unusual_image("RGB", rng) for _ in range(3)]
        path = folder / classes[count % len(classes)] / f"frames{extension}"
        frames[0].save(path, format=image_format, save_all=True, append_images=frames[1:])
        written.append(path)
        count += 1
    extras = {
        "no_extension": None,  # a JPEG saved without its extension
        "misnamed.png": "JPEG",  # a JPEG named .png
        "notes.txt": b"not an image",
        "empty.jpg": b"",
        "cut.jpg": "cut",
    }
    for name, kind in extras.items():
        path = folder / classes[count % len(classes)] / name
        count += 1
        if isinstance(kind, bytes):
            path.write_bytes(kind)
        elif kind == "cut":
            buffer = io.BytesIO()
            unusual_image("RGB", rng, (64, 64)).save(buffer, format="JPEG")
            path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
        else:
            unusual_image("RGB", rng).save(path, format="JPEG")
        written.append(path)
    return written


@contextlib.contextmanager
def static_folder(folder: Path, headers: dict[str, str] | None = None) -> Iterator[str]:
    """`python -m http.server` on `folder` at a free loopback port (sending `headers` with every
    answer): its address, the server stopped afterwards."""
    import functools
    import http.server

    class Handler(http.server.SimpleHTTPRequestHandler):
        def end_headers(self) -> None:
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            super().end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def open_app(page, address: str) -> None:
    """Load the phone app (`imgclf export --format web`) at `address` and wait for its model."""
    page.goto(address)
    page.wait_for_function("window.imgclf !== undefined")
    page.evaluate("window.imgclf.ready")


@contextlib.contextmanager
def app_in_chromium(folder: Path, flags: list[str] | None = None) -> Iterator:
    """The app folder served statically and open in headless Chromium, its model loaded: the page."""
    from playwright.sync_api import sync_playwright

    with static_folder(folder) as address, sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=flags or CHROMIUM_FLAGS
        )
        try:
            page = browser.new_page()
            open_app(page, address)
            yield page
        finally:
            browser.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def served_at(app, **config) -> Iterator[int]:
    """The app running in uvicorn on a free loopback port (the port), stopped afterwards; `config`
    goes to uvicorn.Config."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "the server did not start"
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def write_flower_mosaics(
    folder: Path, count: int, form: str = "space", seed: int = 0, tile: int = 64
) -> tuple[Path, np.ndarray, list[str]]:
    """Multi-label images from real photos: `count` mosaics of 1–4 flowers5 tiles in a 2×2 grid
    (the other cells empty), labelled with the set of flower classes present (at most one mosaic in
    ten has no flower at all: "none of these"), written as JPEGs in `folder/images/` with a table
    beside them in one of the forms multi-label sets come in: "space", "pipe", "semicolon",
    "comma" (quoted) joined labels, or "columns" (one 0/1 column per label). Returns the table,
    the true targets (mosaics × classes) and the class names. Reads flowers5.zip in place."""
    import zipfile

    import pandas as pd

    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(SHARED_DATASETS / "flowers5.zip") as archive:
        by_class: dict[str, list[str]] = {}
        for name in archive.namelist():
            if name.lower().endswith(".jpg"):
                by_class.setdefault(name.split("/")[-2], []).append(name)
        classes = sorted(by_class)
        images = folder / "images"
        images.mkdir(parents=True, exist_ok=True)
        targets = np.zeros((count, len(classes)), np.uint8)
        rows = []
        for index in range(count):
            mosaic = Image.new("RGB", (2 * tile, 2 * tile), (0, 0, 0))
            filled = 0 if rng.random() < 0.1 else int(rng.integers(1, 5))
            for cell in rng.permutation(4)[:filled]:
                label = int(rng.integers(len(classes)))
                member = by_class[classes[label]][int(rng.integers(len(by_class[classes[label]])))]
                photo = Image.open(io.BytesIO(archive.read(member))).convert("RGB").resize((tile, tile))
                mosaic.paste(photo, ((cell % 2) * tile, (cell // 2) * tile))
                targets[index, label] = 1
            mosaic.save(images / f"mosaic_{index:05d}.jpg", quality=90)
            rows.append(f"mosaic_{index:05d}.jpg")
    present = [[c for c, on in zip(classes, row) if on] for row in targets]
    frame = pd.DataFrame({"image": rows})
    if form == "columns":
        for position, name in enumerate(classes):
            frame[name] = targets[:, position]
    else:
        separator = {"space": " ", "pipe": "|", "semicolon": ";", "comma": ","}[form]
        frame["tags"] = [separator.join(labels) for labels in present]
    table = folder / "labels.csv"
    frame.to_csv(table, index=False)
    return table, targets, classes


def write_parquet_shard(
    path: Path,
    images: list[Image.Image],
    labels: list,
    *,
    names: list[str] | None = None,
    binary: bool = False,
    row_group_size: int | None = None,
    label_column: str = "label",
) -> Path:
    """One Parquet shard as the `datasets` library writes an image set: the image as a struct of PNG
    `bytes` and `path` (or plain binary), the label column as given, and with `names` the
    ClassLabel's class names in the schema's `huggingface` metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    encoded = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    if binary:
        column = pa.array(encoded, type=pa.binary())
    else:
        column = pa.array(
            [{"bytes": data, "path": f"image_{n}.png"} for n, data in enumerate(encoded)],
            type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
        )
    table = pa.table({"image": column, label_column: labels})
    if names is not None:
        label = {"names": names, "_type": "ClassLabel"}
        if isinstance(labels[0], list):
            label = {"feature": label, "_type": "Sequence"}
        features = {"image": {"_type": "Image"}, label_column: label}
        table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path
