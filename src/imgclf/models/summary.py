"""A Keras `model.summary()`-style table: layer, output shape, parameters; total and trainable."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: str
    params: int


@dataclass
class ModelSummary:
    rows: list[LayerRow]
    total_params: int
    trainable_params: int
    input_shape: tuple[int, ...]

    def to_text(self, max_rows: int = 60) -> str:
        """Plain-text table (as the CLI prints it)."""
        header = f"{'Layer (type)':<44}{'Output shape':<24}{'Param #':>12}"
        lines = [header, "=" * len(header)]
        shown = self.rows if len(self.rows) <= max_rows else self.rows[: max_rows - 1]
        for row in shown:
            label = f"{row.name} ({row.kind})"
            lines.append(f"{label[:43]:<44}{row.output_shape:<24}{row.params:>12,}")
        if len(shown) < len(self.rows):
            lines.append(f"… {len(self.rows) - len(shown)} more layers")
        lines.append("=" * len(header))
        lines.append(f"Total params: {self.total_params:,}")
        lines.append(f"Trainable params: {self.trainable_params:,}")
        lines.append(f"Non-trainable params: {self.total_params - self.trainable_params:,}")
        return "\n".join(lines)


def summarize_model(model: nn.Module, input_shape: tuple[int, ...]) -> ModelSummary:
    """Run one zero batch through the model and record each leaf layer's output shape."""
    rows: list[LayerRow] = []
    hooks = []

    def make_hook(name: str):
        def hook(module: nn.Module, _inputs, output) -> None:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
            shown = "(None, " + ", ".join(str(d) for d in shape[1:]) + ")" if shape else "-"
            params = sum(p.numel() for p in module.parameters(recurse=False))
            rows.append(LayerRow(name, type(module).__name__, shown, params))

        return hook

    for name, module in model.named_modules():
        if name and not list(module.children()):
            hooks.append(module.register_forward_hook(make_hook(name)))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ModelSummary(rows, total, trainable, input_shape)
