"""No flag is lost: every command's flags (hidden aliases included) against a snapshot that changes
only on purpose; the tutorials' spellings and order work; a setting means the same on every path.

After a deliberate change of flags: `python tests/e2e/test_flags.py --update` rewrites the snapshot.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

import imgclf
from imgclf.cli import app
from imgclf.config import load_config, resolve_config
from imgclf.errors import UsageError

SNAPSHOT = Path(__file__).with_name("flags.json")
runner = CliRunner()


def command_flags() -> dict[str, list[str]]:
    """Every command's option names (both of a --x/--no-x pair, short ones, hidden aliases) and
    argument names, sorted."""
    group = typer.main.get_command(app)
    found = {}
    for name, command in sorted(group.commands.items()):
        subcommands = getattr(command, "commands", None)
        items = [(name, command)] if not subcommands else [(f"{name} {s}", c) for s, c in subcommands.items()]
        for full, item in items:
            names = []
            for param in item.params:
                if param.param_type_name == "option":
                    names += [*param.opts, *param.secondary_opts]
                else:
                    names.append(param.name.upper())
            found[full] = sorted(names)
    return found


def test_every_flag_of_every_command_is_kept() -> None:
    expected = json.loads(SNAPSHOT.read_text())
    now = command_flags()
    lost = {command: sorted(set(flags) - set(now.get(command, []))) for command, flags in expected.items()}
    assert not any(lost.values()), f"flags lost (keep the old name as a hidden alias): {lost}"
    assert now == expected, "new flags: run `python tests/e2e/test_flags.py --update` if they are on purpose"


def test_the_old_and_foreign_spellings_are_hidden_aliases(shapes_model, tmp_path: Path) -> None:
    artifact, data = shapes_model
    image = str(sorted((data / "square").iterdir())[0])
    label_map = tmp_path / "label_map.json"
    label_map.write_text(json.dumps({"square": "A square", "disc": "A disc", "cross": "A cross"}))
    tutorial = runner.invoke(
        app, ["predict", str(artifact), image, "--top_k", "2", "--category_names", str(label_map)]
    )
    ours = runner.invoke(
        app, ["predict", str(artifact), image, "--top-k", "2", "--label-map", str(label_map)]
    )
    assert tutorial.exit_code == 0, tutorial.output
    assert tutorial.stdout == ours.stdout and "A square" in tutorial.stdout and "(A cross" in tutorial.stdout
    hidden = {opt for command in ("predict", "augment-preview") for opt in _hidden_options(command)}
    assert hidden == {"--top_k", "--category_names", "--images"}
    out = tmp_path / "preview.png"
    old = runner.invoke(
        app, ["augment-preview", str(data), "--images", "2", "--variants", "1", "-o", str(out)]
    )
    assert old.exit_code == 0, old.output


def _hidden_options(command: str) -> list[str]:
    click_command = typer.main.get_command(app).commands[command]
    return [opt for param in click_command.params if getattr(param, "hidden", False) for opt in param.opts]


def test_the_tutorials_order_gets_the_corrected_command(shapes_model) -> None:
    artifact, data = shapes_model
    image = str(sorted((data / "disc").iterdir())[0])
    result = runner.invoke(app, ["predict", image, str(artifact)])
    assert result.exit_code == 2
    assert f"the model comes first, imgclf predict {artifact} {image}" in result.output.replace("\n", "")
    with pytest.raises(UsageError, match="the model comes first"):
        imgclf.predict(image, [str(artifact)])


def test_a_setting_means_the_same_from_the_command_line_yaml_and_python(tmp_path: Path) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump({"data": {"image_size": "32x48"}, "model": {"filters": "16,32"}}))
    from_yaml = resolve_config(config)
    from imgclf.api.training import _config_from  # how imgclf.train(image_size=…) reads its keywords

    from_python = _config_from(None, None, {"image_size": "32x48", "filters": "16,32"})
    from_dotted = resolve_config(None, {"data.image_size": "32,48", "model.filters": [16, 32]})
    assert from_yaml.data.image_size == from_python.data.image_size == from_dotted.data.image_size == (32, 48)
    assert from_yaml.model.filters == from_python.model.filters == (16, 32)
    assert _config_from(None, None, {"image_size": 40}).data.image_size == (40, 40)
    flag = runner.invoke(app, ["augment-preview", "x", "--image-size", "32x48", "--help"])
    assert flag.exit_code == 0


def test_a_frozen_config_freezes_its_lists_and_saves_them_as_lists(tmp_path: Path) -> None:
    cfg = resolve_config(None, {"data.image_size": [32, 48], "data.classes": "b,a", "model.filters": [8, 16]})
    with pytest.raises(AttributeError):
        cfg.data.image_size.append(1)  # a tuple: it cannot change in place
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.data.image_size = [1, 1]
    from imgclf.config import save_config

    save_config(cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["data"]["image_size"] == [32, 48] and saved["data"]["classes"] == ["b", "a"]
    assert load_config(tmp_path / "config.yaml") == cfg


if __name__ == "__main__" and "--update" in sys.argv:
    SNAPSHOT.write_text(json.dumps(command_flags(), indent=1) + "\n")
    print(f"wrote {SNAPSHOT}")


def test_api_calls_take_a_data_config_or_its_fields(shapes_dir: Path) -> None:
    from imgclf.config import DataConfig, resolve_data_config

    given = DataConfig(splits="none", image_size=[24, 24])
    cfg = resolve_data_config(given, {"label_col": "kind", "workers": 2})
    assert (cfg.splits, cfg.label_col, cfg.workers, cfg.image_size) == ("none", "kind", 2, [24, 24])
    assert resolve_data_config(None, {"image_size": "32x48"}).image_size == [32, 48]
    with pytest.raises(TypeError, match="unexpected keyword argument 'path_column'"):
        resolve_data_config(None, {"path_column": "x"})
    by_config = imgclf.check(shapes_dir, data_config=DataConfig(splits="none", workers=1))
    by_fields = imgclf.check(shapes_dir, splits="none", workers=1)
    reports = [result.report.to_dict() for result in (by_config, by_fields)]
    timeless = [{k: v for k, v in report.items() if k != "seconds"} for report in reports]
    assert timeless[0] == timeless[1] and timeless[0]["layout"]
