"""Data pipeline images/s with the same augmentation, measured side by side in one run.

    python benchmarks/data_pipeline.py [--batches 150] [--no-keras]

Data: the 60,000 MNIST training PNGs of ../shared/datasets/mnist_png.zip (28×28 grey, batch 64).
Augmentation everywhere: rescale 1/255, width shift 0.3, zoom 0.2, horizontal flip.

- imgclf, cold: a fresh cache folder, so the run lists the files, reads every header, decodes every
  PNG once (in worker processes) and augments on the device, as `imgclf train` does; the number is
  that whole first epoch, start-up included.
- imgclf, warm: a later run on the same data: headers and decoded rows come from the cache folder.
- imgclf, epochs ≥ 2: batches from the in-memory rows, augmented in whole batches.
- torchvision ImageFolder + DataLoader (2 workers, RandomAffine translate/scale + flip).
- Keras ImageDataGenerator.flow_from_directory: a whole first epoch from the start (listing the
  folders included, as imgclf's cold number includes its set-up), then `--batches` more batches.
- tf.keras image_dataset_from_directory with augmentation layers in a tf.data map (TensorFlow in its
  own virtual environment, see tf_env.py).
torchvision and tf.data are timed over `--batches` batches after three warm-up batches.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, describe_machine

from imgclf.config import AugmentConfig

AUGMENT = AugmentConfig(width_shift=0.3, zoom=0.2, hflip=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def imgclf_epochs(train_dir: Path) -> dict[str, float]:
    """Cold (decode + augment one epoch), warm (cache read + one epoch), and a steady epoch."""
    from imgclf.data.augment import BatchAugment
    from imgclf.data.headers import read_headers
    from imgclf.data.prepared import header_workers, prepare_data
    from imgclf.data.preprocess import PreprocessSpec, normalize_batch
    from imgclf.data.sources import scan_source

    spec = PreprocessSpec(28, 28, 1)
    augment = BatchAugment(AUGMENT, seed=0)

    def one_epoch(prepared) -> int:
        count = 0
        for batch in prepared.loader("all", 64, shuffle=True).epoch(0):
            normalize_batch(augment(batch.images), spec)
            count += len(batch.labels)
        return count

    results = {}
    for label in ("cold", "warm"):
        start = time.perf_counter()
        image_set = read_headers(scan_source(train_dir), workers=header_workers(60_000, None))  # as train
        splits = np.full(len(image_set), "all", dtype=object)
        prepared = prepare_data(image_set, splits, spec, "auto", None)
        count = one_epoch(prepared)
        results[label] = count / (time.perf_counter() - start)
    start = time.perf_counter()
    count = one_epoch(prepared)
    results["steady"] = count / (time.perf_counter() - start)
    return results


def torchvision_loader(train_dir: Path, batches: int) -> float:
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    transform = transforms.Compose(
        [
            transforms.Grayscale(),
            transforms.RandomAffine(degrees=0, translate=(0.3, 0.0), scale=(0.8, 1.2)),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),  # rescale to 0..1
        ]
    )
    loader = DataLoader(
        datasets.ImageFolder(str(train_dir), transform=transform),
        batch_size=64,
        shuffle=True,
        num_workers=min(2, os.cpu_count() or 1),
        persistent_workers=True,
    )
    iterator = iter(loader)
    for _ in range(3):
        next(iterator)
    start = time.perf_counter()
    images = sum(len(next(iterator)[0]) for _ in range(batches))
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=150, help="batches timed for the other pipelines")
    parser.add_argument("--no-keras", action="store_true", help="leave out the TensorFlow pipelines")
    args = parser.parse_args()
    print(f"machine: {describe_machine()}")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["IMGCLF_CACHE_DIR"] = cache  # cold means cold: nothing decoded before
        from imgclf.data.archives import unpack_archive

        root = unpack_archive(SHARED / "mnist_png.zip") / "mnist_png"
        train_dir = root / "train"
        rates = {}
        imgclf = imgclf_epochs(train_dir)
        rates["imgclf, cold (epoch 1 from the start)"] = imgclf["cold"]
        rates["imgclf, warm (a later run: caches read)"] = imgclf["warm"]
        rates["imgclf, epochs >= 2 (augment only)"] = imgclf["steady"]
        imgclf_rss = peak_rss_mb()
        rates["torchvision ImageFolder + DataLoader (2 workers)"] = torchvision_loader(
            train_dir, args.batches
        )
        keras_rss = {}
        if not args.no_keras:
            from tf_env import run_keras

            flow = run_keras("flow", str(train_dir), str(args.batches))
            rates["Keras ImageDataGenerator, epoch 1 from the start"] = flow["first_epoch_images_per_s"]
            rates["Keras ImageDataGenerator.flow_from_directory"] = flow["images_per_s"]
            keras_rss["flow"] = flow["peak_rss_mb"]
            dataset = run_keras("dataset", str(train_dir), str(args.batches))
            rates["tf.keras image_dataset_from_directory + layers"] = dataset["images_per_s"]
            keras_rss["dataset"] = dataset["peak_rss_mb"]
    reference = rates.get("Keras ImageDataGenerator.flow_from_directory")
    print(
        f"\nMNIST train, 60,000 PNGs 28x28, batch 64, width shift 0.3 / zoom 0.2 / flip; torch threads "
        f"{torch.get_num_threads()}\n"
    )
    header = f"{'pipeline':<52} {'images/s':>10} {'vs ImageDataGenerator':>22}"
    print(header)
    print("-" * len(header))
    for name, rate in rates.items():
        ratio = f"{rate / reference:.1f}x" if reference else "-"
        print(f"{name:<52} {rate:>10,.0f} {ratio:>22}")
    print(
        f"\npeak RSS: imgclf process {imgclf_rss:,.0f} MB"
        + "".join(f", Keras {k} {v:,.0f} MB" for k, v in keras_rss.items())
    )
    if reference:
        first = rates["Keras ImageDataGenerator, epoch 1 from the start"]
        pairs = {
            "cold first epoch vs its first epoch (both from the start)": imgclf["cold"] / first,
            "cold first epoch vs ImageDataGenerator's later batches": imgclf["cold"] / reference,
            "warm run vs ImageDataGenerator's later batches": imgclf["warm"] / reference,
            "epochs >= 2 vs ImageDataGenerator's later batches": imgclf["steady"] / reference,
        }
        for name, ratio in pairs.items():
            verdict = "meets" if ratio >= 3 else "misses"
            print(f"target: imgclf >= 3x ImageDataGenerator, {name}: {ratio:.1f}x ({verdict})")


if __name__ == "__main__":
    main()
