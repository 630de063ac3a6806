"""MLflow: the config as parameters, each epoch's numbers as metrics, then the final metrics, the curves,
the evaluation, the report and the model folder as artifacts (pip install 'imgclf[mlflow]').

Where `MLFLOW_TRACKING_URI` is set, the run goes there (the only case where anything leaves the
machine: a tracking server the user chose). Otherwise it goes into a local store in the project
folder (`runs/mlflow.db`, artifacts in `runs/mlartifacts/`), which `mlflow ui --backend-store-uri
sqlite:///runs/mlflow.db` opens; MLflow 3 no longer writes its old `./mlruns` file store.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from imgclf.config import Config
from imgclf.io import write_text_atomic
from imgclf.runs import RunFolder
from imgclf.training.events import Callback, TrainState
from imgclf.training.loggers import finite_number, flat_config, phase_names, require_extra

logger = logging.getLogger(__name__)

EXPERIMENT = "imgclf"
METRICS = (
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_map",
    "lr",
    "images_per_s",
    "seconds",
    "elapsed",
)
MAX_PARAM_CHARS = 500  # MLflow's limit on a parameter's value
RUN_ID_FILE = "mlflow_run.txt"  # in the run folder: --resume goes on in the same MLflow run


def check() -> None:
    """At start: a one-line error when MLflow is not installed."""
    require_extra("--log mlflow", "mlflow", "mlflow")


def create_logger(cfg: Config, folder: RunFolder) -> Callback:
    return MlflowLog(cfg, folder)


def tracking_uri(project: Path) -> tuple[str, str | None, str]:
    """(tracking URI, artifact location for a new experiment or None, how to open it): the user's
    MLFLOW_TRACKING_URI, else a SQLite store and an artifact folder inside the project folder."""
    given = os.environ.get("MLFLOW_TRACKING_URI")
    if given:
        return given, None, f"MLFLOW_TRACKING_URI {given}"
    store = project.resolve() / "mlflow.db"
    uri = f"sqlite:///{store}"
    return uri, (project.resolve() / "mlartifacts").as_uri(), f"mlflow ui --backend-store-uri {uri}"


class MlflowLog(Callback):
    """One MLflow run per imgclf run, through an `MlflowClient` (no global active run)."""

    def __init__(self, cfg: Config, folder: RunFolder) -> None:
        from mlflow.tracking import MlflowClient

        self.cfg, self.folder = cfg, folder
        uri, artifacts, how = tracking_uri(folder.path.parent)
        self.client = MlflowClient(tracking_uri=uri)
        self.run_id, resumed = self._resumed_run(), True
        if self.run_id is None:  # a new run; a resumed imgclf run goes on in the MLflow run it began
            found = self.client.get_experiment_by_name(EXPERIMENT)
            experiment = (
                found.experiment_id if found else self.client.create_experiment(EXPERIMENT, artifacts)
            )
            self.run_id, resumed = (
                self.client.create_run(experiment, run_name=folder.path.name).info.run_id,
                False,
            )
            write_text_atomic(folder.path / RUN_ID_FILE, self.run_id + "\n")
        logger.info(
            "MLflow run %s%s (experiment %s): %s, then open http://localhost:5000",
            self.run_id, " (resumed)" if resumed else "", EXPERIMENT, how,
        )  # fmt: skip

    def _resumed_run(self) -> str | None:
        """The MLflow run this run folder began, when it is still in the store (a resumed run)."""
        recorded = self.folder.path / RUN_ID_FILE
        if not recorded.is_file():
            return None
        run_id = recorded.read_text(encoding="utf-8").strip()
        try:
            self.client.get_run(run_id)
        except Exception:  # another store, or the run was deleted: a new one
            return None
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def on_train_start(self, state: TrainState) -> None:
        from mlflow.entities import Param

        if self.client.get_run(self.run_id).data.params:  # resumed: its parameters are logged
            return
        flat = flat_config(self.cfg)
        params = [Param(key, str(value)[:MAX_PARAM_CHARS]) for key, value in flat.items()]
        self.client.log_batch(self.run_id, params=params)
        self.client.set_tag(self.run_id, "imgclf.run_folder", str(self.folder.path))

    def on_epoch_end(self, state: TrainState) -> None:
        row = state.history[-1] if state.history else {}
        epoch = int(row.get("epoch", state.epoch))
        self._metrics({key: row.get(key) for key in METRICS}, epoch)

    def on_run_end(self, run: Any) -> None:
        self._metrics({f"final_{key}": value for key, value in run.metrics.items()}, run.best_epoch or 0)
        self._metrics({f"phase_seconds/{name}": seconds for name, seconds in phase_names(run)}, 0)
        self.client.set_tag(self.run_id, "best_epoch", str(run.best_epoch))
        self.client.set_tag(self.run_id, "stop_reason", run.stop_reason or "as planned")
        path = self.folder.path
        for name in ("curves.png", "report.html", "summary.txt", "config.yaml", "phases.csv"):
            if (path / name).is_file():
                self.client.log_artifact(self.run_id, str(path / name))
        for name in ("evaluation", "model"):
            if (path / name).is_dir():
                self.client.log_artifacts(self.run_id, str(path / name), name)
        self.client.set_terminated(self.run_id)

    def _metrics(self, values: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        chosen = [Metric(key, float(v), now, step) for key, v in values.items() if finite_number(v)]
        if chosen:
            self.client.log_batch(self.run_id, metrics=chosen)
