"""Predictions written to a .csv or .jsonl file as they arrive, resumable after an interruption."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from imgclf.errors import UsageError
from imgclf.inference.predictor import Prediction


class PredictionWriter:
    """Writes predictions to a .csv or .jsonl file as they arrive (memory stays bounded).

    With `resume`, rows already in the file are kept and their paths listed in `done`, so an
    interrupted job continues where it stopped; a last line cut short by the interruption is dropped.
    CSV columns: path, label_1, name_1, prob_1, …, label_k, name_k, prob_k, error; with `unknown`
    (a model that may answer `unknown`) also answer (the class or unknown) and unknown (why); with
    `multi_label`, a `labels` column after path: every label at or above its threshold, joined by
    "|" (empty: none of them), most likely first.
    """

    def __init__(
        self,
        path: str | Path,
        top_k: int,
        resume: bool = False,
        unknown: bool = False,
        multi_label: bool = False,
    ) -> None:
        self.path = Path(path)
        self.jsonl = self.path.suffix.lower() == ".jsonl"
        self.top_k = top_k
        self.unknown = unknown
        self.multi_label = multi_label
        self.done: set[str] = set()
        header = ["path", *(["labels"] if multi_label else [])]
        for rank in range(1, top_k + 1):
            header += [f"label_{rank}", f"name_{rank}", f"prob_{rank}"]
        self.header = [*header, "error", *(["answer", "unknown"] if unknown else [])]
        if resume and self.path.is_file() and self.path.stat().st_size:
            self._read_done()
            self.handle = self.path.open("a", encoding="utf-8", newline="")
            if not self.jsonl and self.path.stat().st_size == 0:  # killed while writing the header
                self.handle.write(",".join(self.header) + "\n")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = self.path.open("w", encoding="utf-8", newline="")
            if not self.jsonl:
                self.handle.write(",".join(self.header) + "\n")
        self._csv = csv.writer(self.handle)

    def _read_done(self) -> None:
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):  # the job stopped in the middle of a line
            data = data[: data.rfind(b"\n") + 1]
            self.path.write_bytes(data)
        text = data.decode("utf-8")
        if self.jsonl:
            self.done = {json.loads(line)["path"] for line in text.splitlines() if line.strip()}
            return
        rows = list(csv.reader(io.StringIO(text)))
        if rows and rows[0] != self.header:
            raise UsageError(
                f"{self.path} was written with other columns (another --top-k or model?); cannot resume it"
            )
        self.done = {row[0] for row in rows[1:] if row}

    def write(self, prediction: Prediction) -> None:
        if self.jsonl:
            self.handle.write(json.dumps(prediction.to_dict(), ensure_ascii=False) + "\n")
            return
        row: list[Any] = [prediction.source]
        if self.multi_label:
            row.append(prediction.label or "")
        for rank in range(self.top_k):
            if rank < len(prediction.labels):
                row += [
                    prediction.labels[rank],
                    prediction.names[rank],
                    f"{prediction.probabilities[rank]:.6f}",
                ]
            else:
                row += ["", "", ""]
        row.append(prediction.error or "")
        if self.unknown:
            row += [prediction.label or "", prediction.unknown or ""]
        self._csv.writerow(row)

    def flush(self) -> None:
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
