from __future__ import annotations

import pytest

from resnet_cli.errors import UnknownModelError, UsageError
from resnet_cli.registry import MODEL_NAMES, MODELS, get_spec, imagenet_weights_file


def test_six_variants_with_their_preprocessing() -> None:
    assert MODEL_NAMES == ("resnet50", "resnet101", "resnet152",
                           "resnet50v2", "resnet101v2", "resnet152v2")
    for name, spec in MODELS.items():
        assert spec.preprocess_mode == ("tf" if name.endswith("v2") else "caffe")
        assert spec.default_size == 224
        assert sum(spec.blocks) in (16, 33, 50)


def test_get_spec_normalises_names() -> None:
    assert get_spec("ResNet50").name == "resnet50"
    assert get_spec("resnet-101-v2").name == "resnet101v2"


def test_unknown_model_suggests_and_lists_choices() -> None:
    with pytest.raises(UnknownModelError) as info:
        get_spec("resnet5")
    message = str(info.value)
    assert "Did you mean 'resnet50'?" in message
    assert "resnet152v2" in message
    assert "\n" not in message
    assert isinstance(info.value, UsageError) and info.value.exit_code == 2


def test_weights_file_names_match_keras() -> None:
    top = imagenet_weights_file(get_spec("resnet50"), include_top=True)
    notop = imagenet_weights_file(get_spec("resnet50"), include_top=False)
    assert top.filename == "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
    assert notop.filename == "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert top.md5 == "2cb95161c43110f7111970584f804107"
    assert notop.url.endswith("/keras-applications/resnet/" + notop.filename)


def test_registry_agrees_with_keras_hashes() -> None:
    from keras.src.applications.resnet import WEIGHTS_HASHES

    for name, spec in MODELS.items():
        assert WEIGHTS_HASHES[name] == (spec.top_md5, spec.notop_md5)
