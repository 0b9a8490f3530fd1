"""The 1000 ImageNet-1k classes (WordNet synset id + label), shipped as package data so exports work offline."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

SYNSETS_FILE = "imagenet_synsets.txt"  # `n01440764<TAB>tench, Tinca tinca`, one line per class, in class order
NUM_IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class ClassNames:
    """Parallel tuples: ``labels[i]`` is the human label of class ``i``, ``synsets[i]`` its WordNet id."""

    synsets: tuple[str, ...]
    labels: tuple[str, ...]


@functools.cache
def imagenet_classes() -> ClassNames:
    """Read the shipped ImageNet-1k class list; class index = line number, which is sorted synset order."""
    text = resources.files("smallnets.export").joinpath("data", SYNSETS_FILE).read_text(encoding="utf-8")
    synsets, labels = [], []
    for line in text.splitlines():
        synset, label = line.split("\t", 1)
        synsets.append(synset)
        labels.append(label)
    if len(synsets) != NUM_IMAGENET_CLASSES:
        raise RuntimeError(f"export/data/{SYNSETS_FILE} lists {len(synsets)} classes, expected 1000: reinstall")
    return ClassNames(tuple(synsets), tuple(labels))
