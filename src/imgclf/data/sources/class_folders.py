"""A folder of class folders, one sub-folder of images per class (Keras' flow_from_directory layout)."""

from __future__ import annotations

import logging

from imgclf.data.folders import scan_class_folders
from imgclf.data.imageset import ImageSet
from imgclf.data.layout import describe, visible_entries

logger = logging.getLogger(__name__)

PRIORITY = 40
NOUN = "a folder of class folders"
EDITS = "folders"


def recognise(query) -> bool:
    return query.path.is_dir() and any(p.is_dir() for p in visible_entries(query.path))


def scan(query) -> ImageSet:
    image_set = scan_class_folders(query.path, classes=query.classes)
    for warning in query.layout.warnings:
        logger.warning("%s", warning)
    image_set.description = describe(query.layout, {"all": len(image_set)})
    return image_set
