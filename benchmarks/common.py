"""Shared helpers of the benchmark scripts: the machine line, bench models and bench images."""

from __future__ import annotations

import json
import os
import platform
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import numpy as np
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"

BENCH_MODELS = {
    # name: (architecture, preprocessing size, channels, normalization)
    "cnn-basic": ("cnn-basic", 28, 1, ([0.0], [1.0])),
    "efficientnet_lite0": ("efficientnet_lite0", 224, 3, ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])),
}


def describe_machine() -> str:
    """One line: processor, cores, memory, GPU, library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    import onnxruntime

    return (
        f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB, {gpu}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}"
    )


def make_bench_artifact(name: str, folder: Path, num_classes: int = 10) -> Path:
    """An artifact of `name` (pretrained backbone weights where imgclf has them; speed does not
    depend on the weights) for latency and serving benchmarks."""
    from imgclf.artifact import ModelInfo, save_artifact
    from imgclf.data.preprocess import PreprocessSpec
    from imgclf.models import create_model

    architecture_name, size, channels, (mean, std) = BENCH_MODELS[name]
    architecture = {
        "name": architecture_name,
        "num_classes": num_classes,
        "in_channels": channels,
        "image_size": [size, size],
    }
    model = create_model(architecture)
    if architecture_name.startswith("efficientnet_lite"):
        from imgclf.models.pretrained import load_pretrained

        load_pretrained(model, architecture_name)
    spec = PreprocessSpec(size, size, channels, mean=mean, std=std)
    info = ModelInfo(architecture, [f"class_{i}" for i in range(num_classes)], spec)
    return save_artifact(folder / name, model.eval(), info)


def bench_images(name: str, count: int) -> list[bytes]:
    """Encoded images as clients send them: MNIST PNGs for cnn-basic, flower JPEGs for the backbone
    (from ../shared/datasets when present, generated otherwise)."""
    archive = SHARED / ("mnist_png.zip" if name == "cnn-basic" else "flowers5.zip")
    suffix = ".png" if name == "cnn-basic" else ".jpg"
    if archive.is_file():
        with zipfile.ZipFile(archive) as handle:
            names = [n for n in handle.namelist() if n.lower().endswith(suffix)]
            step = max(1, len(names) // count)
            return [handle.read(n) for n in names[::step][:count]]
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        size = (28, 28) if name == "cnn-basic" else (500, 375)
        mode = "L" if name == "cnn-basic" else "RGB"
        pixels = rng.integers(0, 256, (size[1], size[0]) + (() if mode == "L" else (3,)), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode).save(buffer, format="PNG" if mode == "L" else "JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


def bench_venv(variable: str, name: str, packages: list[str], what: str, share: bool = False) -> Path:
    """The python of a benchmark's own virtual environment (in `$variable`, default
    `~/.cache/imgclf/bench/NAME`), created on first use with `packages`. With `share`, it also sees
    this environment's packages (PyTorch, timm, the weights packages) through a .pth file, after its
    own, so that it needs no second copy of them."""
    from imgclf.paths import cache_dir

    folder = Path(os.environ.get(variable, cache_dir() / "bench" / name))
    python = folder / "bin" / "python"
    marker = folder / ".imgclf-ready"
    if not marker.is_file():
        print(f"creating the {what} environment in {folder} (one time, a few minutes)", flush=True)
        venv.create(folder, with_pip=True)
        if share:
            own = subprocess.run(
                [str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                capture_output=True, text=True, check=True,
            ).stdout.strip()  # fmt: skip
            Path(own, "imgclf-shared.pth").write_text("\n".join(site.getsitepackages()) + "\n")
        subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
        marker.write_text("ok")
    return python


def run_side(python: Path, script: Path, args: tuple[str, ...], env: dict, timeout: float | None) -> dict:
    """Run a benchmark's other side (`script` with `args`) in its own environment's `python`; its last
    stdout line is JSON."""
    result = subprocess.run(
        [str(python), str(script), *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-3000:])
        raise RuntimeError(f"{script.name} {' '.join(args)} failed (exit {result.returncode})")
    return json.loads(result.stdout.strip().splitlines()[-1])
