"""imgclf's own small networks: the tutorials' baselines, and a configurable CNN."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from imgclf.errors import ModelError


def _flat_size(features: nn.Module, in_channels: int, image_size: Sequence[int], name: str) -> int:
    with torch.no_grad():
        try:
            out = features(torch.zeros(1, in_channels, *image_size))
        except RuntimeError as error:
            raise ModelError(
                f"{name} cannot take {image_size[0]}×{image_size[1]} images (too small); "
                "use a larger --image-size or another --model"
            ) from error
    return int(out.numel())


def _dense_stack(in_features: int, sizes: Sequence[int], dropout: float) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for size in sizes:
        layers += [nn.Linear(in_features, size), nn.ReLU(inplace=True)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        in_features = size
    return layers


class MLP(nn.Module):
    """Dense baseline: flatten → Dense 128 → Dense 64 → classes (sizes settable)."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: Sequence[int],
        dense: Sequence[int] = (128, 64),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        in_features = in_channels * image_size[0] * image_size[1]
        self.features = nn.Flatten()
        self.head = nn.Sequential(
            *_dense_stack(in_features, dense, dropout), nn.Linear(dense[-1], num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SmallCNN(nn.Module):
    """Conv 32 → max-pool → Dense 128 → classes: the smallest useful CNN."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: Sequence[int],
        dense: Sequence[int] = (128,),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Flatten()
        )
        flat = _flat_size(self.features, in_channels, image_size, "cnn-small")
        self.head = nn.Sequential(*_dense_stack(flat, dense, dropout), nn.Linear(dense[-1], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicCNN(nn.Module):
    """The tutorials' network: Conv 32-32 → pool → Conv 64-64 → pool → Dense 512 (dropout 0.5)."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: Sequence[int],
        dense: Sequence[int] = (512,),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        flat = _flat_size(self.features, in_channels, image_size, "cnn-basic")
        self.head = nn.Sequential(*_dense_stack(flat, dense, dropout), nn.Linear(dense[-1], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ConfigurableCNN(nn.Module):
    """One block per filter count (conv-[BN]-ReLU ×2, max-pool), global average pool, dense layers."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: Sequence[int],
        filters: Sequence[int] = (32, 64, 128),
        dense: Sequence[int] = (256,),
        dropout: float = 0.3,
        batchnorm: bool = True,
    ) -> None:
        super().__init__()
        if min(image_size) < 2 ** len(filters):
            raise ModelError(
                f"cnn with {len(filters)} blocks needs images of at least {2 ** len(filters)} px; "
                "use fewer --filters or a larger --image-size"
            )
        layers: list[nn.Module] = []
        channels = in_channels
        for count in filters:
            for _ in range(2):
                layers.append(nn.Conv2d(channels, count, 3, padding=1, bias=not batchnorm))
                if batchnorm:
                    layers.append(nn.BatchNorm2d(count))
                layers.append(nn.ReLU(inplace=True))
                channels = count
            layers.append(nn.MaxPool2d(2))
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        head = _dense_stack(channels, dense, dropout) if dense else []
        if not dense and dropout:
            head.append(nn.Dropout(dropout))
        self.head = nn.Sequential(*head, nn.Linear(dense[-1] if dense else channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
