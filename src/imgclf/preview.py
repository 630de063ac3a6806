"""`augment-preview`: a PNG grid of augmented samples, to see what the settings really do."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from imgclf.config import Config
from imgclf.data.augment import BatchAugment
from imgclf.data.headers import read_headers
from imgclf.data.loader import decode_all
from imgclf.data.prepared import header_workers, load_data
from imgclf.errors import DataError
from imgclf.io import write_atomic
from imgclf.training.recipe import resolve_recipe

logger = logging.getLogger(__name__)


def write_augment_preview(data: str, out: Path, cfg: Config, images: int = 6, variants: int = 7) -> Path:
    """Rows of: the original (as the model sees it) followed by `variants` augmented versions."""
    from PIL import Image
    from torchvision.utils import make_grid

    from imgclf.data.prepared import crop_cache_spec
    from imgclf.models.spec import resolve_spec

    image_set = load_data(data, cfg.data)
    # the model and augmentation `train` would choose: from the whole data set's headers, as it does
    image_set = read_headers(image_set, workers=header_workers(len(image_set), cfg.data.workers))
    if len(image_set) == 0:
        raise DataError("no readable image found to preview")
    cfg, lines = resolve_recipe(cfg, image_set)
    for line in lines:
        logger.info("%s", line)
    rng = np.random.default_rng(cfg.seed)
    chosen = rng.choice(len(image_set), size=min(len(image_set), images * 3), replace=False)
    sample = image_set.subset(np.sort(chosen))
    pretrained = cfg.model.pretrained or bool(cfg.model.weights)
    spec = resolve_spec(cfg.data, cfg.model.name, image_set, pretrained=pretrained)  # as train does
    decoded, ok, _ = decode_all(sample, spec, workers=0)
    # training augments the rows it caches, larger for random-resized crops (see crop_cache_spec)
    source_spec = crop_cache_spec(spec, cfg.augment, image_set) or spec
    sources, source_ok = (
        (decoded, ok) if source_spec is spec else decode_all(sample, source_spec, workers=0)[:2]
    )
    decoded, sources = decoded[ok & source_ok][:images], sources[ok & source_ok][:images]
    if len(decoded) == 0:
        raise DataError("no readable image found to preview")
    originals = torch.from_numpy(decoded).permute(0, 3, 1, 2).float()
    augment = BatchAugment(cfg.augment, cfg.seed, size=(spec.height, spec.width))
    rows = []
    for original, source in zip(originals, torch.from_numpy(sources).permute(0, 3, 1, 2).float()):
        repeated = source.unsqueeze(0).repeat(variants, 1, 1, 1)
        rows.append(torch.cat([original.unsqueeze(0), augment(repeated)]))
    grid = make_grid(torch.cat(rows) / 255.0, nrow=variants + 1, padding=2, pad_value=1.0)
    array = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    image = Image.fromarray(array)
    scale = max(1, 96 // max(spec.height, spec.width))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    out = Path(out)
    write_atomic(out, lambda tmp: image.save(tmp, format="PNG"))
    return out
