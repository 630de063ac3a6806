"""Fine-tuning images/s of the offline backbone, each way of making it cheaper side by side in one run.

    python benchmarks/finetune_speed.py [--model efficientnet_lite0] [--seconds 8] [--variants ...]

Each variant steps AdamW on random tensors already in memory (no data pipeline: this measures the
network's share of an epoch), with BatchNorm statistics frozen as the transfer recipe fine-tunes:

- `all@224`: every layer trains at the backbone's resolution, fp32 (what imgclf did before, when
  the CPU has no bf16);
- `all@224 bf16`: the same under bf16 autocast with channels-last (imgclf's default before, where
  the CPU has AVX-512 BF16 or AMX);
- `lastN@S`: only the last N blocks (and the head) train at S px; the frozen part runs without
  autograd;
- `... b64`: batch 64 instead of 32; `... compiled`: through torch.compile (its compile time printed);
- `... prefix`: only the forward pass of the frozen part (up to the first block that trains), without
  autograd: the share of a step that features of the frozen part, computed once per augmented view
  and reused, would save;
- bf16 variants run the depthwise convolutions' training passes in float32, as the trainer does
  (`imgclf.models.anatomy.depthwise_gradients_in_float32`); `... dw16` keeps them in bf16 (before).

Ratios are to `all@224 bf16` (or `all@224` where bf16 is not native), measured in the same run.

`--pipeline DATA` measures whole training epochs instead: `imgclf.train` on DATA (a folder) with the
transfer recipe, `--epochs 2`, for the variants `all@224`, `last3@224`, `all@160`, `last3@160`
(`--unfreeze`, `--finetune-size`; @160 trains at 160 px all epochs but the last), reporting the
first epoch's images/s (decoding, augmentation and batching included, validation excluded).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_machine

from imgclf.config import ModelConfig
from imgclf.device import cpu_has_bf16
from imgclf.models import create_model
from imgclf.models.anatomy import depthwise_gradients_in_float32
from imgclf.models.factory import model_args
from imgclf.models.pretrained import load_pretrained
from imgclf.training.finetune import set_trainable
from imgclf.training.loop import denormals_flushed

DEFAULT_VARIANTS = (
    "all@224",
    "all@224 bf16 dw16",
    "all@224 bf16",
    "all@224 bf16 b64",
    "last3@224 bf16 dw16",
    "last3@224 bf16",
    "last2@224 bf16",
    "all@160 bf16",
    "all@128 bf16",
    "last3@160 bf16",
    "last2@160 bf16",
)


class _Cut(Exception):
    """Raised at the first block that trains, to time the frozen part's forward pass alone."""


def prefix_rate(
    model: torch.nn.Module, unfreeze: str, images: torch.Tensor, bf16: bool, seconds: float
) -> float:
    """Images/s of the frozen part's forward pass: the model run until its first trainable block."""
    from imgclf.models.anatomy import model_blocks

    def cut(module: torch.nn.Module, inputs: object) -> None:
        raise _Cut

    hook = model_blocks(model)[-int(unfreeze)].register_forward_pre_hook(cut)
    model.eval()

    def forward() -> None:
        with (
            torch.no_grad(),
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16),
            contextlib.suppress(_Cut),
        ):
            model(images)

    with denormals_flushed():
        forward()
        steps, started = 0, time.perf_counter()
        while steps < 3 or time.perf_counter() - started < seconds:
            forward()
            steps += 1
        speed = steps * len(images) / (time.perf_counter() - started)
    hook.remove()
    return speed


def parse(variant: str) -> tuple[str, int, bool, int, bool, bool]:
    words = variant.split()
    unfreeze, size = words[0].split("@")
    unfreeze = "all" if unfreeze == "all" else unfreeze.removeprefix("last")
    batch = next((int(w[1:]) for w in words if w.startswith("b") and w[1:].isdigit()), 32)
    return unfreeze, int(size), "bf16" in words, batch, "compiled" in words, "dw16" in words


def rate(name: str, variant: str, seconds: float) -> tuple[float, float]:
    """(images/s, compile seconds) of training steps for one variant."""
    unfreeze, size, bf16, batch, compiled, depthwise_bf16 = parse(variant)
    model = create_model(model_args(ModelConfig(name=name, pretrained=True), 5, 3, [size, size]))
    load_pretrained(model, name)
    if bf16 and not depthwise_bf16:  # as the trainer does (see depthwise_gradients_in_float32)
        depthwise_gradients_in_float32(model)
    frozen = set_trainable(model, unfreeze, frozen_bn=True)
    model = model.to(memory_format=torch.channels_last).train()
    for module in frozen:
        module.eval()
    step_model = torch.compile(model) if compiled else model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 5, (batch,))
    if "prefix" in variant.split():
        return prefix_rate(model, unfreeze, images, bf16, seconds), 0.0

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = step_model(images)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with denormals_flushed():
        started = time.perf_counter()
        step()
        compile_seconds = time.perf_counter() - started if compiled else 0.0
        step()
        steps, started = 0, time.perf_counter()
        while steps < 3 or time.perf_counter() - started < seconds:
            step()
            steps += 1
        return steps * batch / (time.perf_counter() - started), compile_seconds


PIPELINE_VARIANTS = ("all@224", "last3@224", "all@160", "last3@160")


def pipeline_rate(data: Path, variant: str, folder: Path) -> float:
    """The first fine-tuning epoch's images/s of a real `imgclf.train` run."""
    import imgclf

    unfreeze, size, *_ = parse(variant)
    run = imgclf.train(
        data, project=str(folder / "runs"), name=variant.replace("@", "-"), seed=0, epochs=2,
        unfreeze=unfreeze, finetune_size=0 if size == 224 else size,
    )  # fmt: skip
    epochs = run.history[run.history["epoch"] >= 1]
    return float(epochs["images_per_s"].iloc[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--seconds", type=float, default=8.0, help="timed steps per variant")
    parser.add_argument("--variants", nargs="+", default=None)
    parser.add_argument("--pipeline", type=Path, help="measure whole epochs of imgclf.train on this folder")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"machine: {describe_machine()}; native bf16: {cpu_has_bf16()}", flush=True)
    if args.pipeline is not None:
        import os
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            os.environ["IMGCLF_CACHE_DIR"] = str(Path(folder) / "cache")
            speeds = {}
            for variant in args.variants or PIPELINE_VARIANTS:
                speeds[variant] = pipeline_rate(args.pipeline, variant, Path(folder))
                print(f"  {variant:<12} {speeds[variant]:7.1f} img/s (whole epoch)", flush=True)
        base = next(iter(speeds.values()))
        print(f"\n{'variant':<12} {'img/s':>8} {'× ' + next(iter(speeds)):>10}")
        for variant, speed in speeds.items():
            print(f"{variant:<12} {speed:>8.1f} {speed / base:>10.2f}")
        return
    args.variants = args.variants or list(DEFAULT_VARIANTS)
    base_name = "all@224 bf16" if cpu_has_bf16() and "all@224 bf16" in args.variants else args.variants[0]
    rates = {}
    for variant in args.variants:
        rates[variant] = rate(args.model, variant, args.seconds)
        print(f"  {variant:<24} {rates[variant][0]:7.1f} img/s", flush=True)
    base = rates.get(base_name, next(iter(rates.values())))[0]
    print(f"\n{'variant':<24} {'img/s':>8} {'× ' + base_name:>16} {'compile s':>10}")
    for variant, (speed, compile_seconds) in rates.items():
        print(f"{variant:<24} {speed:>8.1f} {speed / base:>16.2f} {compile_seconds:>10.1f}")


if __name__ == "__main__":
    main()
