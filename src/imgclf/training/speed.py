"""Short timing probes of the network on this hardware: what one batch costs in inference and in
training, so that the transfer recipe can plan its fine-tuning epochs before it runs one."""

from __future__ import annotations

import time

import torch

from imgclf.training.loop import StepContext, autocast


def probe_batch(ctx: StepContext, batch_size: int, size: tuple[int, int] | None = None) -> torch.Tensor:
    count = max(2, min(batch_size, 32))
    height, width = size or (ctx.spec.height, ctx.spec.width)
    inputs = torch.randn(count, ctx.spec.channels, height, width, device=ctx.device)
    return inputs.contiguous(memory_format=torch.channels_last) if ctx.channels_last else inputs


def inference_speed(model: torch.nn.Module, ctx: StepContext, batch_size: int) -> float:
    """Images per second through the network in inference mode, timed on one random batch."""
    inputs = probe_batch(ctx, batch_size)
    model.eval()
    with torch.no_grad(), autocast(ctx):
        model(inputs[:2])  # warm-up
        started = time.perf_counter()
        model(inputs)
    return len(inputs) / max(time.perf_counter() - started, 1e-9)


def training_speed(
    model: torch.nn.Module, ctx: StepContext, batch_size: int, size: tuple[int, int] | None = None
) -> float:
    """Images per second of forward and backward passes over the trainable weights: the fastest of
    two random batches after a warm-up one (a burst of other work on a shared machine slows one step,
    not the run). Nothing is learnt (no optimizer step, gradients cleared); frozen BatchNorm layers
    stay in inference mode, so no statistic moves. `size`: the training input size, when it is not
    the spec's."""
    inputs = probe_batch(ctx, batch_size, size)
    model.train()
    for module in ctx.frozen_norm:
        module.eval()
    seconds = []
    rng = torch.get_rng_state()  # dropout draws must not shift the run's random stream
    for _ in range(3):
        started = time.perf_counter()
        with autocast(ctx):
            loss = model(inputs).float().logsumexp(1).mean()
        loss.backward()
        seconds.append(time.perf_counter() - started)
    model.zero_grad(set_to_none=True)
    torch.set_rng_state(rng)
    model.eval()
    return len(inputs) / max(min(seconds[1:]), 1e-9)
