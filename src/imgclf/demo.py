"""`imgclf demo`: the whole pipeline offline, on scikit-learn's bundled handwritten digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from imgclf.console import ConsoleReporter, console


def write_digits(folder: Path, size: int = 32) -> Path:
    """The 1,797 8×8 digits of scikit-learn, upscaled to size×size PNGs in class folders 0 … 9."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index, (image, label) in enumerate(zip(digits.images, digits.target)):
        class_dir = folder / str(label)
        class_dir.mkdir(parents=True, exist_ok=True)
        path = class_dir / f"{index:04d}.png"
        if path.exists():
            continue
        pixels = np.clip(image * (255.0 / 16.0), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).resize((size, size), Image.Resampling.BICUBIC).save(path)
    return folder


def run_demo(out: Path, epochs: int = 15) -> dict:
    """Write the digits, train the tutorials' CNN from scratch (in seconds; `imgclf train` without
    --model would fine-tune the ImageNet backbone on so few images), evaluate on the held-out test
    split, predict a few."""
    from imgclf import api
    from imgclf.inference.predictor import Predictor

    out = Path(out)
    data = write_digits(out / "digits")
    console.print(f"[bold]demo data[/bold] {data} (1,797 handwritten digits, 32×32 PNG, 10 class folders)")
    run = api.train(
        data,
        model="cnn-basic",
        val_split=0.15,
        test_split=0.15,
        epochs=epochs,
        project=str(out / "runs"),
        name="demo",
        callbacks=[ConsoleReporter()],
    )
    predictor = Predictor.from_path(run.artifact)
    manifest = np.genfromtxt(run.run_dir / "manifest.csv", delimiter=",", dtype=str, skip_header=1)
    first_per_class: dict[str, str] = {}
    for path, label, split in manifest:
        if split == "test":
            first_per_class.setdefault(label, str(data / path))
    test_paths = list(first_per_class.values())[::2]
    console.print("[bold]predictions on test images[/bold]")
    for prediction in predictor.predict(test_paths, top_k=3):
        truth = Path(prediction.source).parent.name
        ranked = ", ".join(f"{n} {p:.3f}" for n, p in zip(prediction.names, prediction.probabilities))
        console.print(f"  {Path(prediction.source).relative_to(out)}  true {truth}  →  {ranked}")
    console.print(f"[bold]test accuracy[/bold] {run.metrics.get('test_acc', float('nan')):.4f}")
    console.print(
        f"next: imgclf predict {run.artifact} {data / '3'} --top-k 3   |   "
        f"imgclf evaluate {run.artifact} {data} --manifest {run.run_dir / 'manifest.csv'} --split test   |   "
        f"imgclf export {run.artifact}   |   imgclf serve {run.artifact}"
    )
    return {"run": run, "test_acc": run.metrics.get("test_acc")}
