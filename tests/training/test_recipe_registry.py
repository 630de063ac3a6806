"""The recipes are one registry, resolved in one place: each recipe runs the epochs it says, the old
flags are aliases of the recipes they meant, and a new recipe is one file."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from test_frozen_config import _photos

import imgclf
import imgclf.training.recipes as recipes_package
from imgclf.config import resolve_config
from imgclf.errors import ConfigError
from imgclf.training.recipe import resolve_recipe
from imgclf.training.recipes import RECIPES

LITE0 = {"model.name": "efficientnet_lite0", "model.pretrained": True}


@pytest.mark.parametrize(
    ("settings", "recipe", "epochs", "finetune"),
    [
        pytest.param({"model.name": "cnn-small"}, "plain", 10, 0, id="plain-default"),
        pytest.param({"model.name": "cnn-small", "train.epochs": 3}, "plain", 3, 0, id="plain-given"),
        pytest.param(
            {**LITE0, "train.head_only": True, "train.epochs": 4}, "head-only", 4, 0, id="head-only-alias"
        ),
        pytest.param(
            {**LITE0, "train.recipe": "head-only", "train.epochs": 4}, "head-only", 4, 0, id="head-only"
        ),
        pytest.param(
            {**LITE0, "train.freeze_epochs": 2, "train.epochs": 10}, "staged", 10, 8, id="staged-epochs"
        ),
        pytest.param(
            {**LITE0, "train.freeze_epochs": 2, "train.finetune_epochs": 3},
            "staged",
            5,
            3,
            id="staged-finetune",
        ),
        pytest.param({**LITE0, "train.freeze_epochs": 2}, "staged", 10, 8, id="staged-default"),
        pytest.param(
            {**LITE0, "train.recipe": "staged", "train.freeze_epochs": 1, "train.epochs": 3},
            "staged",
            3,
            2,
            id="staged",
        ),
        pytest.param(LITE0, "transfer", None, 0, id="transfer-planned"),
        pytest.param({**LITE0, "train.epochs": 2}, "transfer", 2, 0, id="transfer-given"),
    ],
)
def test_each_recipe_runs_the_epochs_it_says(
    settings: dict, recipe: str, epochs: int | None, finetune: int
) -> None:
    cfg, _ = resolve_recipe(resolve_config(None, settings), _photos(400), "cpu")
    assert (cfg.train.recipe, cfg.train.epochs, cfg.train.finetune_epochs) == (recipe, epochs, finetune)
    again, said = resolve_recipe(cfg, _photos(400), "cpu")
    assert again == cfg and said == []  # resolved once: a resolved config comes back the same


def test_staged_epochs_that_disagree_are_one_clear_error() -> None:
    disagree = {**LITE0, "train.freeze_epochs": 2, "train.finetune_epochs": 3, "train.epochs": 10}
    with pytest.raises(ConfigError, match="--epochs 10 is the whole run"):
        resolve_recipe(resolve_config(None, disagree), _photos(40), "cpu")
    with pytest.raises(ConfigError, match="leaves no fine-tuning"):
        resolve_recipe(
            resolve_config(None, {**LITE0, "train.freeze_epochs": 2, "train.epochs": 2}), _photos(40)
        )
    with pytest.raises(ConfigError, match="give --freeze-epochs N"):
        resolve_recipe(resolve_config(None, {**LITE0, "train.recipe": "staged"}), _photos(40))


def test_an_unknown_recipe_names_the_recipes_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match="unknown recipe 'bogus': one of plain, transfer, head-only, staged"
    ):
        imgclf.train(tmp_path / "not-even-there", recipe="bogus")


def test_help_lists_the_recipes_and_loggers_without_importing_torch() -> None:
    code = (
        "import sys; from typer.testing import CliRunner; from imgclf.cli import app; "
        "out = CliRunner().invoke(app, ['train', '--help'], terminal_width=400).output; "
        "print('torch' in sys.modules); print(out)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    imported, output = result.stdout.split("\n", 1)
    assert imported == "False"
    for name in [*RECIPES.names(), "csv"]:
        assert name in output


NEW_RECIPE = '''
    """Every layer trains, and the first epoch is recorded as the recipe's own (a recipe in one file)."""

    from imgclf.training.recipes.plain import DEFAULTS, PlainStrategy

    CALLS = []


    class CountingStrategy(PlainStrategy):
        def set_trainable(self, model):
            CALLS.append("set_trainable")
            return super().set_trainable(model)

        def first_stage(self, trainer):
            CALLS.append(("first_stage", trainer.data.val_name, trainer.loaders.steps_per_epoch))
            return None


    STRATEGY = CountingStrategy
'''


def test_a_new_recipe_is_one_file(shapes_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "counting.py").write_text(textwrap.dedent(NEW_RECIPE))
    monkeypatch.setattr(recipes_package, "__path__", [*recipes_package.__path__, str(folder)])
    assert "counting" in RECIPES.names()
    assert "counting (Every layer trains, and the first epoch is recorded" in RECIPES.describe()
    run = imgclf.train(
        shapes_dir,
        recipe="counting",
        model="cnn-small",
        epochs=1,
        image_size=[24, 24],
        project=str(tmp_path / "r"),
    )
    module = RECIPES.load("counting")
    assert module.CALLS == ["set_trainable", ("first_stage", "val", 2)]
    saved = yaml.safe_load((run.run_dir / "config.yaml").read_text())
    assert saved["train"]["recipe"] == "counting" and saved["train"]["epochs"] == 1
    assert run.metrics["val_acc"] >= 0.0 and (run.artifact / "model.safetensors").is_file()


NEW_LOGGER = '''
    """Each epoch's validation accuracy in a text file of the run folder (a logger in one file)."""

    from imgclf.training.events import Callback


    class AccuracyFile(Callback):
        def __init__(self, path):
            self.path = path

        def on_epoch_end(self, state):
            with self.path.open("a") as handle:
                handle.write(f"{state.epoch} {state.last.get('val_acc', float('nan')):.4f}\\n")


    def create_logger(cfg, folder):
        return AccuracyFile(folder.path / "accuracy.txt")
'''


def test_a_new_logger_is_one_file_and_an_unknown_one_stops_before_any_work(
    shapes_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import imgclf.training.loggers as loggers_package
    from imgclf.training.loggers import LOGGERS

    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "accuracy_file.py").write_text(textwrap.dedent(NEW_LOGGER))
    monkeypatch.setattr(loggers_package, "__path__", [*loggers_package.__path__, str(folder)])
    assert LOGGERS.names()[:1] == ["csv"] and "accuracy-file" in LOGGERS.names()
    with pytest.raises(ConfigError, match="unknown logger 'nowhere': one of csv, accuracy-file"):
        imgclf.train(tmp_path / "not-even-there", log=["nowhere"])
    run = imgclf.train(
        shapes_dir,
        log="accuracy-file",
        model="cnn-small",
        epochs=2,
        image_size=[24, 24],
        project=str(tmp_path / "r"),
    )
    lines = (run.run_dir / "accuracy.txt").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["1", "2"]
    assert len(run.history) == 2  # metrics.csv is always written
