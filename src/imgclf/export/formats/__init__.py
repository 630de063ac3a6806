"""Export formats, one module each, found by file name (`ort.py` is `--format ort`).

A format module declares, as literals read without importing it:

- `SUFFIX`: its file's suffix (".ort"); `imgclf export` writes `model[.int8]<SUFFIX>` by default;
- `RUNTIME`: "onnxruntime" when `predict`, `evaluate` and `serve` run its files (through
  `Predictor`), else None;

and as functions: `check_options(quantize, dynamic_batch)` (a UsageError for options it cannot
honour, before any work; optional) and `write(job, result) -> bytes`, which turns the checked float
(or int8) ONNX graph in `job` into the format's bytes, checks them, and records its check on
`result` (`kind`, `batch`, `check_lines`). Nothing is written unless `write` returns. Its
docstring's first line is what `imgclf export --help` says about it.
"""

from imgclf.registry import EXPORT_FORMATS as FORMATS

__all__ = ["FORMATS"]
