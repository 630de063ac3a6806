"""A phone app: an installable web app (PWA) that runs the model in the browser, offline.

`imgclf export RUN --format web --out flowers-app/` writes a folder any static host can serve (a
folder on GitHub Pages, `python -m http.server`), and `imgclf serve` serves the same app at /app/:

- `index.html`, `app.js` (the page: camera, file picker, top-k, the `unknown` rule; the test
  contract `window.imgclf.ready` and `window.imgclf.predict(blob)`), `preprocess.js` (imgclf's
  preprocessing in the browser, in Pillow's integer arithmetic);
- `model.onnx` (the checked graph: int8 where its check passes, else float; `--quantize` decides)
  and `model.json` (classes, display names, preprocessing, the unknown rule, what the file is);
- `vendor/onnxruntime-web/`: ONNX Runtime Web's WebAssembly runtime, vendored from the npm package
  `onnxruntime-web` at a pinned version with its licence (`scripts/refresh-onnxruntime-web.sh`);
- `sw.js` (the service worker: after the first load everything comes from the browser's cache, so
  the app opens and classifies with no network; a new export is a new cache; it also makes the
  page cross-origin isolated so that WebAssembly threads run where the host sends no COOP/COEP
  headers), `manifest.webmanifest` and icons (installable, named after the run);
- `README.txt`: how to put it on a phone.

Nothing in it comes from another origin.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclf.errors import ModelError, UsageError
from imgclf.installable import ICON_FILES, web_app_manifest

if TYPE_CHECKING:
    from imgclf.export.exporter import ExportJob, ExportResult

SUFFIX = ""  # a folder
FOLDER = "web"  # the default folder in the model folder: <model>/web/
QUANTIZE = "auto"  # int8 where its check passes, else float
RUNTIME = None
MODEL_FILE = "model.onnx"
CONFIG_FILE = "model.json"
MARKER = "imgclf-web-app"  # model.json's "format": how a folder imgclf may replace is recognised
TOP_K = 3
# the app's own files, from the package, and the vendored runtime
APP_FILES = ("index.html", "app.js", "preprocess.js")
RUNTIME_FILES = (
    "vendor/onnxruntime-web/ort.wasm.min.mjs",
    "vendor/onnxruntime-web/ort-wasm-simd-threaded.mjs",
    "vendor/onnxruntime-web/ort-wasm-simd-threaded.wasm",
    "vendor/onnxruntime-web/LICENSE",
    "vendor/onnxruntime-web/VERSION.json",
)
# files that need the server's token when `imgclf serve` has one (the rest are the same for every
# model, or, as the manifest, fetched by the browser without the page's token); serve's AccessGuard
# keeps the same list (imgclf.serve.access.PRIVATE_APP_PATHS)
PRIVATE_FILES = (MODEL_FILE, CONFIG_FILE)


def check_options(quantize: str, dynamic_batch: bool) -> None:
    if not dynamic_batch:
        raise UsageError("--format web runs one image at a time: leave out --fixed-batch")


def owns(folder: Path) -> bool:
    """Whether `folder` is an app this format wrote (its model.json says so): the only non-empty
    folder an export replaces."""
    try:
        return json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8")).get("format") == MARKER
    except (OSError, ValueError, AttributeError):
        return False


def write(job: ExportJob, result: ExportResult) -> dict[str, bytes]:
    """The app's files (path → bytes), the job's checked graph inside."""
    metadata = graph_metadata(job.payload)
    files = app_files(job.payload, metadata, name=run_name(metadata))
    result.model_size_bytes = len(job.payload)
    result.kind = f"web app: ONNX Runtime Web {runtime_version()}, {describe_model(metadata)}"
    result.batch = "1"
    size = sum(len(content) for content in files.values())
    result.check_lines.append(
        f"app: {len(files)} files, {size / 1e6:.1f} MB ({len(job.payload) / 1e6:.1f} MB model, "
        f"{len(files[RUNTIME_FILES[2]]) / 1e6:.1f} MB WebAssembly runtime); nothing from another origin"
    )
    return files


def graph_metadata(model: bytes) -> dict[str, str]:
    """An ONNX graph's metadata_props (imgclf's, as `export_metadata` wrote them)."""
    import onnx

    try:
        proto = onnx.load_from_string(model)
    except Exception as error:  # onnx raises DecodeError and others for bytes that are not a graph
        raise ModelError(f"not an ONNX model: {error}") from error
    return {entry.key: entry.value for entry in proto.metadata_props}


def describe_model(metadata: dict[str, str]) -> str:
    return "int8 model" if "imgclf.quantization" in metadata else "float model"


def run_name(metadata: dict[str, str]) -> str:
    """The name the app shows: the data's folder name and the run's ("flowers5 · train"), else
    the first classes."""
    try:
        model = json.loads(metadata.get("imgclf.model", "{}"))
    except json.JSONDecodeError:
        model = {}
    data = str((model.get("dataset") or {}).get("source") or "").replace("\\", "/").rstrip("/")
    data = data.rsplit("/", 1)[-1].removesuffix(".zip")
    run = str((((model.get("training") or {}).get("config") or {}).get("output") or {}).get("name") or "")
    name = " · ".join(part for part in (data, run) if part)
    if not name:
        classes = json.loads(metadata.get("imgclf.classes", "[]"))
        name = "imgclf: " + ", ".join(str(c) for c in classes[:3]) + (" …" if len(classes) > 3 else "")
    return name[:60]


def runtime_version() -> str:
    return json.loads(_asset("vendor/onnxruntime-web/VERSION.json"))["version"]


def app_config(model: bytes, metadata: dict[str, str], name: str) -> dict[str, Any]:
    """model.json: what the page needs to prepare an image and read the model's answers."""
    from imgclf.inference.onnx_runtime import DISTANCE_NAME, SIMILARITY_NAME
    from imgclf.version import __version__

    classes = json.loads(metadata["imgclf.classes"])
    unknown = json.loads(metadata["imgclf.unknown"]) if "imgclf.unknown" in metadata else None
    multi_label = metadata.get("imgclf.task") == "multi-label"
    return {
        "format": MARKER,
        "imgclf": __version__,
        "name": name,
        "classes": classes,
        "display_names": json.loads(metadata.get("imgclf.display_names", json.dumps(classes))),
        "task": "multi-label" if multi_label else "single-label",
        "thresholds": json.loads(metadata["imgclf.thresholds"]) if multi_label else None,
        "preprocessing": json.loads(metadata["imgclf.preprocessing"]),
        "unknown": unknown,
        "likeness_outputs": [SIMILARITY_NAME, DISTANCE_NAME] if unknown and unknown.get("similarity") else [],
        "top_k": min(TOP_K, len(classes)),
        "model": MODEL_FILE,
        "model_bytes": len(model),
        "model_sha256": hashlib.sha256(model).hexdigest(),
        "quantization": metadata.get("imgclf.quantization", "none (float32)"),
        "weights_sha256": metadata.get("imgclf.weights_sha256", ""),
        "runtime": {"package": "onnxruntime-web", "version": runtime_version()},
    }


def app_files(model: bytes, metadata: dict[str, str], name: str) -> dict[str, bytes]:
    """Every file of the app, by its path in the folder: the page, the runtime, the model, its
    config, the manifest, the icons, and the service worker that caches them all (its cache named
    by a digest of everything else, so that a new export replaces the old cache)."""
    if "imgclf.classes" not in metadata or "imgclf.preprocessing" not in metadata:
        raise ModelError("this ONNX file carries no imgclf metadata: export it with `imgclf export`")
    config = app_config(model, metadata, name)
    files: dict[str, bytes] = {path: _asset(path) for path in (*APP_FILES, *RUNTIME_FILES)}
    files.update({icon: _icon(icon) for icon in ICON_FILES})
    files[MODEL_FILE] = model
    files[CONFIG_FILE] = json.dumps(config, ensure_ascii=False, indent=1).encode("utf-8")
    files["manifest.webmanifest"] = json.dumps(manifest(config), ensure_ascii=False, indent=1).encode()
    files["README.txt"] = readme(config).encode("utf-8")
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
    build = digest.hexdigest()[:16]
    cached = ["./", *sorted(files)]
    files["sw.js"] = (
        _asset("sw.js")
        .decode("utf-8")
        .replace('"__BUILD__"', json.dumps(build))
        .replace('"__FILES__"', json.dumps(cached))
        .replace('"__PRIVATE__"', json.dumps(list(PRIVATE_FILES)))
        .encode("utf-8")
    )
    return files


def manifest(config: dict[str, Any]) -> dict[str, Any]:
    classes = config["classes"]
    description = f"Classifies photos on this phone, offline: {len(classes)} classes."
    return web_app_manifest(config["name"], config["name"][:12], description)


def readme(config: dict[str, Any]) -> str:
    return f"""{config["name"]}: an image classifier that runs on the phone (imgclf {config["imgclf"]})

Put this folder on any web server that speaks HTTPS (GitHub Pages, Netlify, your own), open its
address on the phone once, and add it to the home screen ("Install app" / "Add to Home Screen").
From then on it opens and classifies with no network: the model runs in the browser
(ONNX Runtime Web {config["runtime"]["version"]}, WebAssembly), and no photo leaves the phone.

Browsers run the offline part (the service worker) and the live camera only on HTTPS or on
localhost. To try it on this computer:  python -m http.server -d . 8000  then open
http://localhost:8000/ . From `imgclf serve MODEL --host 0.0.0.0` the app is at /app/ (the QR code
serve prints); over plain HTTP on a network it works while that computer is reachable.

Files: index.html, app.js, preprocess.js (the page; preprocess.js prepares images exactly as imgclf
did in training), {config["model"]} ({config["model_bytes"] / 1e6:.1f} MB, {config["quantization"]}),
model.json (classes and preprocessing), sw.js (offline cache), manifest.webmanifest and icons,
vendor/onnxruntime-web/ (ONNX Runtime Web, MIT licence in its LICENSE file).

Scripts can use it too: await window.imgclf.ready; await window.imgclf.predict(blob) gives the
top {config["top_k"]} as [{{"class", "name", "probability"}}, ...] ("unknown": true where the model's
unknown rule answers unknown).
"""


def _asset(path: str) -> bytes:
    return resources.files("imgclf.export").joinpath("web_app", *path.split("/")).read_bytes()


def _icon(name: str) -> bytes:
    # the same icons as serve's camera page (the package's one copy of them)
    return resources.files("imgclf.serve").joinpath(name).read_bytes()


def served_app(model: str | Path) -> tuple[dict[str, bytes] | None, str]:
    """The app `imgclf serve MODEL` serves at /app/, and a line that says where it comes from:

    - the folder `imgclf export MODEL --format web` wrote (<model>/web/) when its graph answers as
      the model does now (its weights, label thresholds and calibration: `stale_reason`);
    - else an app around the model's model.onnx when that is current (or the .onnx file given), built
      now;
    - else none, and the line names the export command that makes one.
    """
    from imgclf.artifact import resolve_artifact_path
    from imgclf.inference.onnx_runtime import metadata_info, stale_reason

    location = Path(model).expanduser()
    if location.is_file() and location.suffix.lower() == ".onnx":
        content = location.read_bytes()
        metadata = graph_metadata(content)
        return app_files(content, metadata, run_name(metadata)), f"the phone app around {location.name}"
    artifact_dir = resolve_artifact_path(location)

    def current(metadata: dict[str, str]) -> bool:  # the weights, thresholds and calibration of now
        digest = metadata.get("imgclf.weights_sha256", "")
        return (
            "imgclf.model" in metadata and stale_reason(artifact_dir, metadata_info(metadata), digest) is None
        )

    folder = artifact_dir / FOLDER
    graph = folder / MODEL_FILE
    content = graph.read_bytes() if owns(folder) and graph.is_file() else None
    if content is not None and current(graph_metadata(content)):
        files = {
            item.relative_to(folder).as_posix(): content if item == graph else item.read_bytes()
            for item in sorted(folder.rglob("*"))
            if item.is_file() and not item.name.startswith(".")
        }
        return files, f"the phone app in {folder}"
    exported = artifact_dir / MODEL_FILE
    if exported.is_file():
        content = exported.read_bytes()
        metadata = graph_metadata(content)
        if current(metadata):
            return app_files(content, metadata, run_name(metadata)), f"the phone app around {exported.name}"
    return None, f"no phone app at /app/: make one with `imgclf export {model} --format web`"
