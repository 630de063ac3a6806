"""Entry points that use a trained model: `load_model`, `predict` and `explain` over files,
`export_model`, `serve`; and `list_models`, the networks `--model` accepts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from imgclf.errors import ModelError, UsageError
from imgclf.inference.predictor import Predictor

if TYPE_CHECKING:
    from imgclf.inference.jobs import ExplainJob, PredictionJob
    from imgclf.serve import ServeSettings


def load_model(path: str | Path, device: str = "cpu", backend: str = "auto", tta: bool = False) -> Predictor:
    """Load a saved model (artifact folder, run folder or exported .onnx file) ready to predict.

    `tta`: average each image's probabilities with its mirror image's (test-time augmentation).
    """
    return Predictor.from_path(path, device=device, backend=backend, tta=tta)


def predict(
    model: str | Path,
    inputs: Sequence[str | Path],
    *,
    top_k: int = 3,
    output: str | Path | None = None,
    resume: bool = False,
    shard: str | None = None,
    batch_size: int = 64,
    device: str = "auto",
    backend: str = "auto",
    threads: int | None = None,
    tta: bool = False,
    label_map: str | Path | None = None,
) -> PredictionJob:
    """Top-k predictions for files, folders (recursive) or globs, streamed: iterate the job for each
    prediction as it comes; with `output` (.csv or .jsonl) they are written there as well, and with
    `resume` the rows already in it are kept and their images skipped. `shard` "I/N" predicts every
    N-th input from the I-th (split work across machines)."""
    from imgclf.inference.jobs import PredictionJob, check_prediction_options

    check_model_first(model, inputs)
    check_prediction_options(top_k, output, resume)
    predictor = Predictor.from_path(
        model, device=device, label_map=label_map, backend=backend, threads=threads, tta=tta
    )
    return PredictionJob(predictor, inputs, top_k, batch_size, output, resume, shard)


def check_model_first(model: str | Path, inputs: Sequence[str | Path]) -> None:
    """The tutorials' `predict.py IMAGE MODEL` order: when the model given is an image and an input is
    a model, say the command in imgclf's order instead of "not a model folder"."""
    from imgclf.data.decode import IMAGE_EXTENSIONS
    from imgclf.inference.predictor import export_suffixes

    def is_model(path: Path) -> bool:
        if path.is_file():
            return path.suffix.lower() in export_suffixes() or path.name == "imgclf.json"
        return (path / "imgclf.json").is_file() or (path / "model" / "imgclf.json").is_file()

    given = Path(model).expanduser()
    if not (given.is_file() and given.suffix.lower() in IMAGE_EXTENSIONS):
        return
    models = [str(item) for item in inputs if is_model(Path(item).expanduser())]
    if models:
        images = [str(given), *(str(item) for item in inputs if str(item) not in models)]
        raise UsageError(
            f"{given} is an image and {models[0]} a model: the model comes first, "
            f"imgclf predict {models[0]} {' '.join(images)}"
        )


def explain(
    model: str | Path,
    inputs: Sequence[str | Path],
    *,
    out: str | Path = "explain",
    class_name: str | None = None,
    device: str = "auto",
) -> ExplainJob:
    """Grad-CAM heatmaps of files, folders or globs (of the top-1 class, or `class_name`), through the
    PyTorch model: iterate the job; it writes NAME.gradcam.png per image and explanations.csv."""
    from imgclf.inference.explain import Explainer
    from imgclf.inference.jobs import ExplainJob

    return ExplainJob(Explainer(Predictor.from_path(model, device=device, backend="torch")), inputs, out,
                      class_name)  # fmt: skip


def serve(
    model: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServeSettings | None = None,
    backend: str = "auto",
    device: str = "auto",
    threads: int | None = None,
    tta: bool = False,
    label_map: str | Path | None = None,
    access_log: bool = False,
    token: str | None = None,
    require_token: bool | None = None,
    on_start: Callable[[Predictor, str | None, str, str | None], None] | None = None,
    ssl_certfile: str | Path | None = None,
    ssl_keyfile: str | Path | None = None,
) -> None:
    """Serve a model over HTTP until interrupted (see `imgclf.serve`).

    Bound to anything but loopback, every request needs a token (`token`, else $IMGCLF_TOKEN, else
    one made up now), unless `require_token` is False; with `ssl_certfile` and `ssl_keyfile` (PEM)
    it speaks HTTPS; bound to loopback, none unless one is given,
    and requests naming another host are refused. Unless `settings.max_waiting` is given, the queue
    is sized from the model's speed, measured now on blank images (which also warms it up).
    `on_start(predictor, token, admission, app)` runs once the model is loaded, before the server
    listens; `admission` is the line that says how many requests run and wait, `app` the line that
    says where the phone app at /app/ comes from (None without one).

    The phone app (`imgclf export MODEL --format web`) is served at /app/: the exported folder,
    else one built now around the model's current model.onnx.
    """
    import uvicorn

    from imgclf.serve import ServeSettings, create_app
    from imgclf.serve.access import LOOPBACK_HOSTS, Access, resolve_token
    from imgclf.serve.connections import deadline_protocol, raise_open_file_limit

    settings = settings or ServeSettings()
    settings.check()
    if not 0 < port < 65536:
        raise UsageError("--port must be between 1 and 65535")
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise UsageError("--ssl-certfile and --ssl-keyfile go together")
    for given in (ssl_certfile, ssl_keyfile):
        if given is not None and not Path(given).is_file():
            raise UsageError(f"no such file: {given}")
    predictor = Predictor.from_path(
        model, device=device, label_map=label_map, backend=backend, threads=threads, tta=tta
    )
    settings, admission = settings.sized(measured_speed(predictor, settings.max_batch))
    token = resolve_token(host, token, require_token)
    access = Access(token=token, loopback_only=host in LOOPBACK_HOSTS, log_requests=access_log)
    from imgclf.export.formats.web import served_app

    try:
        web_app, app_line = served_app(model)
    except (ModelError, OSError, ValueError) as error:  # the API still serves; say why the app does not
        web_app, app_line = None, f"no phone app at /app/: {error}"
    application = create_app(predictor, settings, access, web_app, app_line)
    if on_start is not None:
        on_start(predictor, token, admission, app_line if web_app is not None else None)
    raise_open_file_limit()
    uvicorn.run(
        application,
        host=host,
        port=port,
        http=deadline_protocol(settings.read_timeout_s),
        log_level="warning",
        access_log=False,  # imgclf's own (`Access.log_requests`): with any token removed
        ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
        ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
    )


def measured_speed(predictor: Predictor, max_batch: int) -> float:
    """Images per second the predictor scores in batches of up to 8 blank images (after one
    warm-up batch), as `serve` meets them."""
    import time

    import numpy as np

    spec = predictor.spec
    batch = np.zeros((min(8, max(1, max_batch)), spec.height, spec.width, spec.channels), np.uint8)
    predictor.score_arrays(batch)
    start = time.perf_counter()
    predictor.score_arrays(batch)
    return len(batch) / max(time.perf_counter() - start, 1e-6)


def list_models(pattern: str | None = None) -> list[tuple[str, str]]:
    """(name, description) of the models `--model` accepts: imgclf's builtins, registered families,
    the offline backbones, then timm's architectures (filtered by an fnmatch `pattern`)."""
    from imgclf.models import list_models as models

    return models(pattern)
