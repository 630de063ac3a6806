"""Run under torchrun: trains like `imgclf train`, but rank 1 dies in the middle of epoch 2."""

from __future__ import annotations

import os
import sys

import imgclf
from imgclf.training import loop

if __name__ == "__main__":
    data, project = sys.argv[1], sys.argv[2]
    if os.environ.get("RANK") == "1":
        original, calls = loop.prepare_batch, [0]

        def dying_prepare_batch(*args, **kwargs):
            calls[0] += 1
            if calls[0] == 6:  # epoch 1 takes 3 training and 1 validation batch per rank
                os._exit(3)
            return original(*args, **kwargs)

        loop.prepare_batch = dying_prepare_batch
    imgclf.train(data, model="cnn-small", epochs=3, batch_size=16, project=project, name="killed")
