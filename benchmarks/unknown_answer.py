"""How the `unknown` answer holds on images nobody calibrated on.

For a trained run (its data and manifest must still be where they were):

1. the feature bank is built from the training split, as `--min-precision` builds it;
2. the validation split is cut in two halves (seeded): the temperature and the rule are fitted on
   one half and measured on the other (then the other way round), so the coverage, precision and
   ECE printed are out of sample, as a user's new images are;
3. images of another data set (`--other`, files or a glob) go through the rule fitted on the whole
   validation split: the share that comes out `unknown`, and the share each test alone would catch.

    python benchmarks/unknown_answer.py runs/flowers --min-precision 0.95 --other 'mnist/test/*/*.png'

Prints the machine line, then one table. Run with the model's cache folder (IMGCLF_CACHE_DIR) to
skip unpacking the data again.
"""

from __future__ import annotations

import argparse
import glob
import time
from pathlib import Path

import numpy as np
from common import describe_machine

import imgclf
from imgclf import runs
from imgclf.api import select_data
from imgclf.config import DataConfig
from imgclf.data.prepared import prepare_data
from imgclf.evaluation.calibration import calibrate_answers, ece, unknown_metrics
from imgclf.evaluation.evaluate import predict_split
from imgclf.evaluation.model_calibration import bank_images
from imgclf.inference.predictor import with_temperature
from imgclf.inference.unknown import FeatureBank, UnknownRule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="A run folder written by imgclf train.")
    parser.add_argument("--min-precision", type=float, default=0.95)
    parser.add_argument("--other", nargs="+", required=True, help="Images of another data set.")
    parser.add_argument("--other-count", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(describe_machine())

    started = time.perf_counter()
    predictor = imgclf.load_model(args.run, device="cpu", backend="torch")
    predictor.temperature, predictor.unknown_rule, predictor.bank = 1.0, None, None
    info = predictor.info
    image_set, split_names = select_data(
        info.dataset["source"], DataConfig(), "all", args.run / runs.MANIFEST_FILE, classes=info.classes
    )
    prepared = prepare_data(image_set, split_names, info.preprocessing, "auto", None)
    bank = FeatureBank.from_images(predictor.features, bank_images(prepared), 128)
    predictor.bank = bank
    probabilities, labels, _, likeness = predict_split(predictor, prepared, "val", 128)
    seconds = time.perf_counter() - started
    print(f"bank {len(bank.vectors)} training images, {len(labels)} validation images, {seconds:.1f} s")

    halves = np.array_split(np.random.default_rng(args.seed).permutation(len(labels)), 2)
    rows = []
    for fit, measure in (halves, halves[::-1]):
        report, _ = calibrate_answers(
            probabilities[fit], labels[fit], likeness[fit], "val", args.min_precision, strict=True
        )
        rule = UnknownRule.from_calibration(report)
        measured = with_temperature(probabilities[measure], report["temperature"])
        result = unknown_metrics(measured, labels[measure], likeness[measure], rule)["unknown"]
        rows.append(
            (
                report["threshold"]["coverage"],
                report["threshold"]["precision"],
                result["coverage"],
                result["precision"],
                ece(probabilities[measure], labels[measure]),
                ece(measured, labels[measure]),
            )
        )
    print(f"\nP ≥ {args.min_precision}, fitted on one half of the validation split, measured on the other:")
    print(
        "| half | fitted coverage | fitted precision | held-out coverage | held-out precision "
        "| held-out ECE before → after |"
    )
    print("|---|---|---|---|---|---|")
    for number, row in enumerate(rows, 1):
        fitted, held_out = f"{row[0]:.1%} | {row[1]:.4f}", f"{row[2]:.1%} | {row[3]:.4f}"
        print(f"| {number} | {fitted} | {held_out} | {row[4]:.4f} → {row[5]:.4f} |")

    report, _ = calibrate_answers(probabilities, labels, likeness, "val", args.min_precision, strict=True)
    rule = UnknownRule.from_calibration(report)
    paths = sorted(path for pattern in args.other for path in glob.glob(pattern))
    paths = [paths[i] for i in np.random.default_rng(args.seed).permutation(len(paths))[: args.other_count]]
    predictor.temperature = report["temperature"]
    arrays = np.stack([array for _, array, _ in map(predictor.prepare_input, paths) if array is not None])
    other_probabilities, other_likeness = predictor.score_arrays(arrays)
    unknown = rule.mask(other_probabilities, other_likeness)
    by_confidence = other_probabilities.max(axis=1) < rule.confidence
    by_similarity = other_likeness[:, 0] < rule.similarity
    by_distance = other_likeness[:, 1] > rule.distance
    print(f"\nrule fitted on the whole validation split: {rule.describe()}")
    print(
        f"{len(arrays)} images of another data set: unknown {unknown.mean():.1%} "
        f"(confidence alone {by_confidence.mean():.1%}, similarity alone {by_similarity.mean():.1%}, "
        f"distance alone {by_distance.mean():.1%})"
    )
    print(f"total {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
