"""Bundle configs read as data: references and literal expressions are followed, anything
that would run code is refused by message (nothing is evaluated)."""

from __future__ import annotations

import re

import pytest

from napari_llmseg.backends.bundle_config import BundleConfig

#: The entries of wholeBody_ct_segmentation's inference.json that decide its spacing,
#: weights and overlap, as published in the MONAI Model Zoo.
WHOLE_BODY = {
    "displayable_configs": {"highres": True, "sw_overlap": 0.25, "sw_batch_size": 1},
    "imports": ["$import glob", "$import numpy", "$import os"],
    "bundle_root": ".",
    "image_key": "image",
    "pixdim": "$[1.5, 1.5, 1.5] if @displayable_configs#highres else [3.0, 3.0, 3.0]",
    "modelname": "$'model.pt' if @displayable_configs#highres else 'model_lowres.pt'",
    "load_path": "$@bundle_root + '/models/' + @modelname",
    "overlap": "@displayable_configs#sw_overlap",
}


@pytest.mark.parametrize("highres", [True, False])
def test_whole_body_values_read_as_the_config_means_them(highres):
    data = {**WHOLE_BODY, "displayable_configs": {**WHOLE_BODY["displayable_configs"],
                                                  "highres": highres}}  # fmt: skip
    config = BundleConfig(data)
    assert config.lookup("pixdim") == ([1.5] * 3 if highres else [3.0] * 3)
    assert config.lookup("load_path") == "./models/" + ("model.pt" if highres else
                                                        "model_lowres.pt")  # fmt: skip
    assert config.lookup("overlap") == 0.25
    assert config.read(["@image_key", {"k": "@bundle_root"}], "x") == ["image", {"k": "."}]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("$4 * 2", 8),
        ("$-57", -57),
        ("$1.5 / 2 + 1", 1.75),
        ("$(1, 2)", [1, 2]),
        ("$@a > 1 and @b == 'x'", True),
        ("$not @c", True),
        ("$1 < @a <= 2", True),
        ("$@c or 7", 7),
        ("$None", None),
    ],
)
def test_literal_expressions_are_computed(text, value):
    config = BundleConfig({"a": 2, "b": "x", "c": False})
    assert config.read(text, "v") == value


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("$__import__('os').system('true')", "it calls something"),
        ("$torch.device('cpu')", "it calls something"),
        ("$numpy.float32", "it reads an attribute"),
        ("$os", "it names something outside the config"),
        ("$[1, 2][0]", "it indexes a value"),
        ("$[i for i in (1, 2)]", "it loops"),
        ("$(lambda: 1)", "it defines a function"),
        ("$2 ** 64", "only + - * / are read"),
        ("$[0] * 10", "arithmetic is read on numbers (and + on strings) only"),
        ("$1 / 0", "it divides by zero"),
        ("$-'a'", "only numbers are negated"),
    ],
)
def test_code_in_expressions_is_refused_by_message(text, why):
    with pytest.raises(ValueError, match=re.escape(f"inference.json: v is {text!r}; {why}")):
        BundleConfig({}).read(text, "v")


def test_references_macros_and_sizes_are_checked():
    config = BundleConfig({"a": "@b", "b": "@a", "long": "$" + "1 + " * 200 + "1"})
    with pytest.raises(ValueError, match=re.escape("the references @a -> @b -> @a form a cycle")):
        config.lookup("a")
    with pytest.raises(
        ValueError, match=re.escape("inference.json: '@nowhere' refers to no entry")
    ):
        config.read("@nowhere", "v")
    with pytest.raises(ValueError, match=re.escape(
        "inference.json: v is '%configs/train.json#net', a macro that reads another file"
    )):  # fmt: skip
        config.read("%configs/train.json#net", "v")
    with pytest.raises(ValueError, match=r"@long is an expression of 801 characters; at most 400"):
        config.lookup("long")
    with pytest.raises(ValueError, match="is not an expression that can be read as data"):
        config.read("$import os", "v")
