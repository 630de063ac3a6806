"""Multi-label training pieces: the loss over label-set indices, MixUp's label vectors, positive
weights, the head on features, the split and the label check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imgclf.data.augment import BatchMix
from imgclf.data.imageset import ImageSet
from imgclf.data.label_sets import label_set_index, relabel_for_model
from imgclf.data.prepared import check_classes
from imgclf.data.split import assign_splits
from imgclf.errors import DataError
from imgclf.features.head import fit_multi_label_head
from imgclf.training.optim import MAX_POSITIVE_WEIGHT, MultiLabelLoss, positive_weights


def multi_label_set(targets: np.ndarray, names: list[str]) -> ImageSet:
    labels, classes = label_set_index(targets, names)
    image_set = ImageSet([f"{i}.png" for i in range(len(targets))], labels, classes, None, "table", "t.csv")  # type: ignore[arg-type]
    image_set.targets, image_set.label_names = targets.astype(np.uint8), names
    return image_set


def test_mixed_label_vectors_are_what_the_loss_sees() -> None:
    """λ·loss(labels) + (1-λ)·loss(other labels), as the loop computes it with MixUp or CutMix, is
    the binary cross-entropy of the mixed label vectors."""
    targets = np.asarray([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]], np.float32)
    image_set = multi_label_set(targets, ["a", "b", "c"])
    table = torch.from_numpy(image_set.set_targets())
    loss_fn = MultiLabelLoss(table)
    labels = torch.from_numpy(image_set.labels)
    images = torch.rand(4, 3, 8, 8)
    logits = torch.randn(4, 3)
    _, others, lam = BatchMix(mixup=0.4, cutmix=0.0, seed=1)(images, labels)
    looped = lam * loss_fn(logits, labels) + (1 - lam) * loss_fn(logits, others)
    mixed = lam * table[labels] + (1 - lam) * table[others]
    assert torch.equal(table[labels], torch.from_numpy(targets))
    assert looped.item() == pytest.approx(
        torch.nn.functional.binary_cross_entropy_with_logits(logits, mixed).item(), rel=1e-6
    )


def test_positive_weights_favour_rare_labels_within_a_cap() -> None:
    targets = np.zeros((1000, 3), np.float32)
    targets[:500, 0] = 1  # half
    targets[:100, 1] = 1  # one in ten
    targets[:2, 2] = 1  # one in 500
    weights = positive_weights(targets).tolist()
    assert weights[0] == pytest.approx(1.0)
    assert weights[1] == pytest.approx(9.0)
    assert weights[2] == MAX_POSITIVE_WEIGHT


def test_head_on_features_finds_each_label() -> None:
    """Features that carry each label in a direction of their own: the head's validation mAP is
    near 1, and it learns that an image may have none of them."""
    rng = np.random.default_rng(0)
    targets = (rng.random((300, 4)) < 0.3).astype(np.float32)
    directions = rng.normal(size=(4, 32))
    features = targets @ directions + rng.normal(0, 0.3, (300, 32))
    fit = fit_multi_label_head(features[:200], targets[:200], features[200:], targets[200:])
    assert fit.val_map > 0.97
    logits = features[200:] @ fit.weight.numpy().T + fit.bias.numpy()
    empty = targets[200:].sum(1) == 0
    assert ((logits[empty] < 0).all(1)).mean() > 0.8


def test_split_keeps_every_label_in_every_split_and_the_label_check() -> None:
    rng = np.random.default_rng(1)
    targets = (rng.random((200, 5)) < [0.5, 0.3, 0.2, 0.1, 0.05]).astype(np.uint8)
    image_set = multi_label_set(targets, list("abcde"))
    splits = assign_splits(image_set, 0.2, 0.2, seed=0)
    for split in ("train", "val", "test"):
        assert (targets[splits == split].sum(0) > 0).all(), split
    check_classes(image_set, splits)  # every label has training images: no error
    targets[:, 4] = 0
    targets[np.flatnonzero(splits == "val")[:3], 4] = 1  # a label only in validation
    image_set = multi_label_set(targets, list("abcde"))
    with pytest.raises(DataError, match="label 'e' has no usable image for training"):
        check_classes(image_set, splits)


def test_relabel_for_model_maps_columns_and_single_labels() -> None:
    targets = np.asarray([[1, 0], [0, 1], [1, 1]], np.uint8)
    image_set = relabel_for_model(multi_label_set(targets, ["rose", "daisy"]), ["daisy", "rose", "tulip"])
    assert image_set.targets.tolist() == [[0, 1, 0], [1, 0, 0], [1, 1, 0]]
    assert image_set.classes[image_set.labels[2]] == "daisy|rose"
    single = ImageSet(["x.png", "y.png"], np.asarray([1, 0]), ["daisy", "tulip"], None, "folders", "d")  # type: ignore[arg-type]
    assert relabel_for_model(single, ["daisy", "rose", "tulip"]).targets.tolist() == [[0, 0, 1], [1, 0, 0]]
    with pytest.raises(DataError, match="label 'lily'"):
        relabel_for_model(multi_label_set(targets, ["rose", "lily"]), ["daisy", "rose"])
