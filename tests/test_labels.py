from __future__ import annotations

import hashlib
import json
from importlib import resources

import pytest

from resnet_cli.errors import UsageError
from resnet_cli.labels import build_labels, find_class, load_imagenet_labels, resolve_class

KERAS_INDEX_MD5 = "c2c37ea517e94d9795004a39431a14cb"  # Keras' imagenet_class_index.json


def test_packaged_index_is_byte_identical_to_keras() -> None:
    data = resources.files("resnet_cli").joinpath("data/imagenet_class_index.json").read_bytes()
    assert hashlib.md5(data).hexdigest() == KERAS_INDEX_MD5


def test_imagenet_labels_in_keras_order() -> None:
    labels = load_imagenet_labels()
    assert len(labels) == 1000
    assert [label.index for label in labels] == list(range(1000))
    assert labels[0].wnid == "n01440764" and labels[0].name == "tench"
    assert labels[281].name == "tabby"
    assert labels[999].name == "toilet_tissue"
    assert len({label.wnid for label in labels}) == 1000


def test_labels_agree_with_keras_decode_predictions(tmp_path, monkeypatch) -> None:
    """Keras' decode_predictions, fed our file from its cache, names the same classes."""
    import numpy as np
    from keras.applications.imagenet_utils import decode_predictions

    models = tmp_path / "models"
    models.mkdir()
    text = resources.files("resnet_cli").joinpath("data/imagenet_class_index.json").read_text()
    (models / "imagenet_class_index.json").write_text(text)
    # Keras reads KERAS_HOME once, at import: point its resolved home at our folder.
    monkeypatch.setattr("keras.src.backend.config._KERAS_DIR", str(tmp_path))
    monkeypatch.setattr("keras.src.applications.imagenet_utils.CLASS_INDEX", None)
    preds = np.zeros((1, 1000), dtype="float32")
    preds[0, [1, 281, 999]] = [0.2, 0.5, 0.3]
    decoded = decode_predictions(preds, top=3)[0]
    ours = load_imagenet_labels()
    assert [(w, n) for w, n, _ in decoded] == [(ours[i].wnid, ours[i].name) for i in (281, 999, 1)]
    assert json.loads(text)["281"] == ["n02123045", "tabby"]


def test_build_labels_for_own_classes() -> None:
    labels = build_labels(["cat", "dog"])
    assert [(lb.index, lb.wnid, lb.name) for lb in labels] == [(0, None, "cat"), (1, None, "dog")]


def test_resolve_class() -> None:
    imagenet = load_imagenet_labels()
    assert resolve_class("tabby", imagenet) == 281
    assert resolve_class("Great White Shark", imagenet) == 2
    assert resolve_class("n01440764", imagenet) == 0
    assert resolve_class("999", imagenet) == 999
    with pytest.raises(UsageError, match="0 to 999"):
        resolve_class("1000", imagenet)
    with pytest.raises(UsageError, match=r"did you mean.*tabby"):
        resolve_class("tabbby", imagenet)
    with pytest.raises(UsageError):  # a digit to str.isdigit, not to int()
        resolve_class("\u00b2", imagenet)
    assert resolve_class("square", build_labels(["circle", "square"])) == 1


def test_one_class_name_rule_case_and_spaces() -> None:
    """evaluate's class folders and explain's --class match by the same rule."""
    own = build_labels(["Golden Retriever", "tabby_cat"])
    assert find_class("golden_retriever", own) == 0
    assert find_class("GOLDEN RETRIEVER", own) == 0
    assert find_class("Tabby Cat", own) == 1
    assert find_class("tabby", own) is None
    with pytest.raises(UsageError, match=r"did you mean Golden Retriever\?"):
        resolve_class("golden retreiver", own)
