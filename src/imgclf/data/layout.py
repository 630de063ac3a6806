"""Which folders are splits and which are classes, found by structure and named by their words.

A folder whose sub-folders each hold class folders with the same names is a split layout, whatever
the split folders are called (`training_set/`, `seg_train/`, `Train/`, `train_data/` …); their names
map to train / val / test by their words. A name that maps to no split is an error that names the
`--splits` option, never a guess. Anything else is a folder of class folders.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from imgclf.errors import DataError, UsageError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# The words a split folder (or a table's split column) is called by, in any case.
SPLIT_WORDS = {
    "train": "train",
    "training": "train",
    "trn": "train",
    "trainset": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "validate": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
    "tst": "test",
    "eval": "test",
    "evaluation": "test",
    "holdout": "test",
}
# Words that go with a split's name and say nothing about which split it is (seg_train, train_data,
# TrainingSet, testset, test_images …).
FILLER_WORDS = ("set", "data", "dataset", "split", "images", "imgs", "img", "seg", "files", "photos", "part")
IGNORED_FOLDERS = frozenset({"__MACOSX", "__pycache__"})
IGNORED_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


def _words(name: str) -> list[str]:
    """ "seg_train" → [seg, train]; "TrainingSet" → [training, set]; "train2017" → [train]."""
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name)
    return re.findall(r"[a-z]+", spaced.lower())


def split_of_name(name: str) -> str | None:
    """The split a folder name (or a split column's value) stands for, by its words; None if none or
    more than one."""
    found: set[str] = set()
    for word in _words(name):
        split = SPLIT_WORDS.get(word)
        if split is None:
            for filler in FILLER_WORDS:  # trainset, testdata, valimages …
                if word.endswith(filler) and word[: -len(filler)] in SPLIT_WORDS:
                    split = SPLIT_WORDS[word[: -len(filler)]]
                elif word.startswith(filler) and word[len(filler) :] in SPLIT_WORDS:
                    split = SPLIT_WORDS[word[len(filler) :]]
        if split is not None:
            found.add(split)
    return found.pop() if len(found) == 1 else None


def visible_entries(folder: Path) -> list[Path]:
    """A folder's entries without hidden files and the clutter operating systems leave."""
    return sorted(
        p
        for p in folder.iterdir()
        if not p.name.startswith(".") and p.name not in IGNORED_NAMES and p.name not in IGNORED_FOLDERS
    )


def sub_folders(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in visible_entries(folder) if p.is_dir()}


def unwrap(folder: Path) -> Path:
    """Descend through folders that hold nothing but one folder (`training_set/training_set/`)."""
    while True:
        entries = visible_entries(folder)
        if len(entries) == 1 and entries[0].is_dir():
            folder = entries[0]
        else:
            return folder


def _holds_files(folder: Path) -> bool:
    return any(p.is_file() for p in visible_entries(folder))


@dataclass
class FolderLayout:
    """What a folder of images is: split folders (split → the folder holding its class folders) or
    class folders (`splits` empty), with the folders left out and the warnings found."""

    root: Path
    splits: dict[str, Path] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # split → the folder's name as the user wrote it
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (folder, why)
    warnings: list[str] = field(default_factory=list)
    how: str = ""  # how the layout was decided, for the summary line

    @property
    def kind(self) -> str:
        return "split-folders" if self.splits else "class-folders"


def parse_splits_option(value: str | None) -> dict[str, str] | str:
    """`--splits`: "auto" (found by structure and names), "none" (the sub-folders are classes), or
    "train=a,val=b,test=c" (these folders are these splits)."""
    if value is None or value.strip().lower() in ("", "auto"):
        return "auto"
    if value.strip().lower() == "none":
        return "none"
    mapping: dict[str, str] = {}
    for part in value.split(","):
        split, sep, folder = part.partition("=")
        split, folder = split.strip().lower(), folder.strip()
        split = SPLIT_WORDS.get(split, split)
        if not sep or split not in SPLITS or not folder:
            raise UsageError(
                f"--splits takes auto, none, or train=FOLDER,val=FOLDER,test=FOLDER; got {value!r}"
            )
        if split in mapping:
            raise UsageError(f"--splits names the {split} split twice")
        mapping[split] = folder
    if "train" not in mapping and "test" not in mapping and "val" not in mapping:
        raise UsageError(f"--splits names no split: {value!r}")
    return mapping


def _class_names(folder: Path) -> set[str]:
    return set(sub_folders(unwrap(folder)))


def find_layout(folder: Path, splits: str | None = "auto") -> FolderLayout:
    """Decide whether `folder` holds split folders or class folders (see the module docstring)."""
    option = parse_splits_option(splits)
    if isinstance(option, dict):
        return _given_splits(folder, option)
    layout = FolderLayout(folder)
    candidates = sub_folders(folder)
    chosen = [] if option == "none" else _split_candidates(candidates, layout)
    if not chosen:
        layout.how = "--splits none" if option == "none" else ""
        _check_class_folders(layout)
        return layout
    named = {name: split_of_name(name) for name in chosen}
    unnamed = [name for name in chosen if named[name] is None]
    if unnamed:
        listing = ", ".join(chosen)
        free = iter(split for split in SPLITS if split not in named.values())
        guessed = {name: named[name] or next(free, "test") for name in chosen}
        example = ",".join(
            f"{guessed[name]}={name}" for name in sorted(chosen, key=lambda n: SPLITS.index(guessed[n]))
        )
        raise DataError(
            f"{folder} holds folders with the same class folders inside ({listing}), but "
            f"{', '.join(repr(n) for n in unnamed)} {'names' if len(unnamed) == 1 else 'name'} no split "
            "(train, val or test); say which is "
            f"which with --splits {example}, or --splits none if {listing} are classes"
        )
    for split in SPLITS:
        same = [name for name in chosen if named[name] == split]
        if len(same) > 1:
            raise DataError(
                f"{folder}: {' and '.join(same)} all look like the {split} split; choose with "
                f"--splits {split}={same[0]}"
            )
    for name in sorted(chosen, key=lambda n: SPLITS.index(named[n] or "train")):
        layout.splits[named[name] or "train"] = unwrap(candidates[name])
        layout.names[named[name] or "train"] = name
    for name, path in candidates.items():
        if name not in chosen:
            layout.left_out.append((name, _why_left_out(path)))
    return layout


def _split_candidates(candidates: dict[str, Path], layout: FolderLayout) -> list[str]:
    """The sub-folders that are splits: by structure (two or more hold the same class folders), else
    by name (a `train` folder with class folders, with or without others beside it)."""
    children = {name: _class_names(path) for name, path in candidates.items()}
    # Names that at least two folders hold: the classes, if these folders are splits.
    shared = {cls for names in children.values() for cls in names}
    shared = {cls for cls in shared if sum(cls in names for names in children.values()) > 1}
    structural = [
        name
        for name, names in children.items()
        if len(names & shared) >= 2 and len(names & shared) * 2 >= len(names)
    ]
    if len(structural) >= 2:
        layout.how = "found by structure: these folders hold the same class folders"
        return structural
    by_name = [name for name in candidates if split_of_name(name) is not None and children[name]]
    if any(split_of_name(name) == "train" for name in by_name):
        layout.how = "found by the folders' names"
        return by_name
    return []


def _why_left_out(path: Path) -> str:
    if _class_names(path):
        return "its folders are not the split folders' classes"
    if _holds_files(unwrap(path)):
        return "images without class folders (unlabelled?)"
    return "no class folders in it"


def _given_splits(folder: Path, option: dict[str, str]) -> FolderLayout:
    layout = FolderLayout(folder, how="given by --splits")
    chosen: set[str] = set()
    for split in SPLITS:
        if split not in option:
            continue
        path = folder / option[split]
        if not path.is_dir():
            raise UsageError(f"--splits {split}={option[split]}: no such folder in {folder}")
        layout.splits[split] = unwrap(path)
        chosen.add(path.resolve().as_posix())
    layout.names = {split: option[split] for split in layout.splits}
    for name, path in sub_folders(folder).items():
        if path.resolve().as_posix() not in chosen:
            layout.left_out.append((name, "not named by --splits"))
    return layout


def _check_class_folders(layout: FolderLayout) -> None:
    """Warn about class folders that hold folders named like splits or like the other classes: the
    classes may be one level deeper than imgclf reads them."""
    classes = sub_folders(layout.root)
    for name, path in classes.items():
        inner = set(sub_folders(path)) - {name}
        like_splits = sorted(n for n in inner if split_of_name(n) is not None)
        like_classes = sorted(n for n in inner if n in classes)
        suspicious = like_splits or like_classes
        if suspicious:
            what = "splits" if like_splits else "classes"
            layout.warnings.append(
                f"class folder {name!r} holds folders named like {what} ({', '.join(suspicious[:4])}); "
                f"every image below it is labelled {name!r}. If the classes are one level deeper, give "
                f"that folder, or name the splits with --splits"
            )


def describe(layout: FolderLayout, counts: dict[str, int]) -> str:
    """The layout in one line: `split folders training_set → train (8,000), test_set → test (2,000)`."""
    if layout.splits:
        names = layout.names
        parts = [f"{names.get(split, split)} → {split} ({counts.get(split, 0):,})" for split in layout.splits]
        text = "split folders " + ", ".join(parts)
    else:
        text = f"class folders in {layout.root.name or layout.root} ({sum(counts.values()):,} images)"
    if layout.left_out:
        text += "; left out: " + ", ".join(f"{name} ({why})" for name, why in layout.left_out)
    return text
