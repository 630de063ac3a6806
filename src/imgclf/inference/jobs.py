"""Jobs over many files, streamed with bounded memory: predictions (to the terminal or a .csv/.jsonl
file, resumable, shardable) and explanations (a Grad-CAM PNG per image and explanations.csv). The
`predict` and `explain` commands print what these yield."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from pathlib import Path

from imgclf.errors import UsageError
from imgclf.inference.explain import Explainer, Explanation, explanation_png
from imgclf.inference.inputs import iter_inputs, parse_shard, select_shard
from imgclf.inference.predictor import Prediction, Predictor
from imgclf.inference.writer import PredictionWriter
from imgclf.io import write_atomic, write_text_atomic

EXPLANATIONS_FILE = "explanations.csv"


def check_prediction_options(top_k: int, output: str | Path | None, resume: bool) -> None:
    """A UsageError for options that cannot work together (before any model is loaded)."""
    if top_k < 1:
        raise UsageError("--top-k must be at least 1")
    if output is not None and Path(output).suffix.lower() not in (".csv", ".jsonl"):
        raise UsageError("--output must end in .csv or .jsonl")
    if resume and output is None:
        raise UsageError("--resume continues an --output file; name it")


class PredictionJob:
    """The predictions of files, folders (recursive) or globs, one per image as they come; written to
    `output` (.csv or .jsonl, flushed every batch) when given, its rows kept and their images skipped
    with `resume`; `shard` "I/N" takes every N-th input from the I-th. Iterate it to run it."""

    def __init__(
        self,
        predictor: Predictor,
        inputs: Sequence[str | Path],
        top_k: int = 3,
        batch_size: int = 64,
        output: str | Path | None = None,
        resume: bool = False,
        shard: str | None = None,
    ) -> None:
        check_prediction_options(top_k, output, resume)
        output = Path(output) if output is not None else None
        self.predictor, self.top_k, self.batch_size, self.output = predictor, top_k, batch_size, output
        paths = iter_inputs(inputs)
        if shard is not None:
            paths = select_shard(paths, *parse_shard(shard))
        self.writer = None
        if output is not None:
            columns = min(top_k, len(predictor.classes))
            self.writer = PredictionWriter(
                output,
                columns,
                resume,
                unknown=predictor.unknown_rule is not None,
                multi_label=predictor.multi_label,
            )
            done = self.writer.done
            paths = (path for path in paths if path not in done)
        self.paths = paths
        self.resumed = len(self.writer.done) if self.writer is not None else 0
        self.written = self.failed = 0

    def __iter__(self) -> Iterator[Prediction]:
        try:
            for result in self.predictor.iter_predict(self.paths, self.top_k, self.batch_size):
                self.written += 1
                self.failed += bool(result.error)
                if self.writer is not None:
                    self.writer.write(result)
                    if self.written % self.batch_size == 0:
                        self.writer.flush()
                yield result
        finally:
            if self.writer is not None:
                self.writer.close()


class ExplainJob:
    """Grad-CAM over files, folders or globs: NAME.gradcam.png per image in `out` (the image as the
    model saw it, and the heatmap over it), and explanations.csv (path, class, name, probability,
    peak_row, peak_col, error, unknown) written at the end, however the job ends. Yields each result
    with the PNG written for it (None for an image that could not be read)."""

    def __init__(self, explainer: Explainer, inputs: Sequence[str | Path], out: str | Path,
                 class_name: str | None = None) -> None:  # fmt: skip
        self.explainer, self.inputs, self.out, self.class_name = explainer, inputs, Path(out), class_name
        self.written = self.failed = 0

    @property
    def table(self) -> Path:
        return self.out / EXPLANATIONS_FILE

    def __iter__(self) -> Iterator[tuple[Explanation | Prediction, Path | None]]:
        self.out.mkdir(parents=True, exist_ok=True)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["path", "class", "name", "probability", "peak_row", "peak_col", "error", "unknown"])
        used: set[str] = set()
        try:
            for result in self.explainer.explain(iter_inputs(self.inputs), self.class_name):
                if not isinstance(result, Explanation):
                    self.failed += 1
                    writer.writerow([result.source, "", "", "", "", "", result.error, ""])
                    yield result, None
                    continue
                stem = Path(result.source).stem
                name = stem if stem not in used else f"{stem}-{self.written}"
                used.add(name)
                content = explanation_png(result)
                path = self.out / f"{name}.gradcam.png"
                write_atomic(path, lambda tmp, data=content: tmp.write_bytes(data))
                row, column = result.peak
                writer.writerow([result.source, result.label, result.name, f"{result.probability:.6f}", row,
                                 column, "", result.unknown or ""])  # fmt: skip
                self.written += 1
                yield result, path
        finally:
            write_text_atomic(self.table, buffer.getvalue())
