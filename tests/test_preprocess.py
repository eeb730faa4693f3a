"""Preprocessing and labels travel with the model (issue 15, item 3): the data keys (normalize, image_size,
channels, channel_order, class_names), applied once at load time so that training, calibration and the test
split see the same values, and written into every ONNX file, model.json and report.json."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
from PIL import Image

from compress._onnx import read_metadata
from compress.data import load_data
from compress.errors import DataError, RecipeError
from compress.preprocess import io_details, onnx_metadata, preprocessing
from compress.quantization.backend import Reader
from compress.recipe import DataConfig, parse_recipe

from tests.conftest import MINIMAL_RECIPE

MEAN, STD = [0.25], [0.5]


def recipe_with(**data):
    return parse_recipe({**copy.deepcopy(MINIMAL_RECIPE), "data": data})


def error_of(**data) -> str:
    with pytest.raises(RecipeError) as info:
        recipe_with(**data)
    return str(info.value)


def images(root, colours: dict[str, list[tuple[int, int, int]]], size=(4, 3)):
    """An image folder: one sub-folder per class, one solid-colour RGB image per colour."""
    for cls, cols in colours.items():
        (root / cls).mkdir(parents=True)
        for i, c in enumerate(cols):
            Image.new("RGB", size, c).save(root / cls / f"{i}.png")
    return root


# --- recipe keys -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data, expected", [
    ({"normalize": {"mean": [0.5], "std": [0.2, 0.3]}},
     "data.normalize: mean has 1 value(s) and std 2; give one of each per channel"),
    ({"normalize": {"mean": [0.5], "std": [0.0]}}, "data.normalize.std[0]: Input should be greater than 0 (got 0.0)"),
    ({"channels": 3, "normalize": {"mean": [0.5], "std": [0.2]}},
     "data.normalize: mean and std have 1 value(s), but source 'digits' gives 3 channel(s) (channels: 3); give one "
     "mean and one std per channel"),
    ({"class_names": ["a", "b", "a"]}, "data.class_names: class names must be unique; ['a'] appear more than once"),
    ({"channel_order": "bgr"}, "data: 'channel_order' is a key of source 'imagefolder', not of source 'digits'"),
    ({"source": "npz", "path": "x.npz", "image_size": 32},
     "data: 'image_size' is a key of the image sources (digits, imagefolder), not of source 'npz' (save the arrays at "
     "the size and channels the model takes)"),
    ({"source": "stdlib-text", "normalize": {"mean": [0.5], "std": [0.2]}},
     "data: 'normalize' is a key of the image sources (digits, imagefolder, npz), not of source 'stdlib-text' (its "
     "inputs are byte values)"),
    ({"source": "imagefolder", "path": "imgs", "channels": 1, "channel_order": "bgr"},
     "data: 'channel_order' needs 3 channels (channels: 3); channels is 1"),
])
def test_bad_data_keys_name_the_key(data, expected):
    assert error_of(**data).startswith(expected)


def test_defaults_depend_on_the_source_and_a_dump_parses_again():
    assert (DataConfig().channels, DataConfig().channel_order) == (1, None)
    folder = DataConfig(source="imagefolder", path="imgs")
    assert (folder.channels, folder.channel_order) == (3, "rgb")
    for cfg in (DataConfig(), folder, DataConfig(source="npz", path="x.npz"),
                DataConfig(channels=3, image_size=32, normalize={"mean": [0.1] * 3, "std": [0.2] * 3})):
        assert DataConfig.model_validate(cfg.model_dump(mode="json")) == cfg


# --- data ----------------------------------------------------------------------------------------------------


def test_digits_resized_to_32x32_with_3_channels():
    s = load_data(DataConfig(image_size=32, channels=3), seed=0)
    assert s.input_shape == (3, 32, 32) and s.train.x.shape[1:] == (3, 32, 32) and s.train.x.dtype == np.float32
    x = s.train.x
    assert np.array_equal(x[:, 0], x[:, 1]) and np.array_equal(x[:, 0], x[:, 2])  # the grey channel repeated
    assert 0 <= x.min() and x.max() <= 1  # scaled to [0, 1] (x/16) before any normalisation
    plain = load_data(DataConfig(), seed=0)
    assert np.array_equal(s.test.y, plain.test.y) and s.fingerprint != plain.fingerprint


def test_normalisation_reaches_training_calibration_and_test():
    raw = load_data(DataConfig(), seed=0)
    s = load_data(DataConfig(normalize={"mean": MEAN, "std": STD}), seed=0)
    for part in ("train", "val", "test"):
        np.testing.assert_allclose(getattr(s, part).x, (getattr(raw, part).x - 0.25) / 0.5, rtol=0, atol=1e-6)
    # the quantize stage's calibration batches come from the training split as loaded
    got = Reader(s.train.x, "input", samples=64, batch_size=32, seed=0).get_next()["input"]
    ref = Reader(raw.train.x, "input", samples=64, batch_size=32, seed=0).get_next()["input"]
    np.testing.assert_allclose(got, (ref - 0.25) / 0.5, rtol=0, atol=1e-6)
    assert s.fingerprint != raw.fingerprint  # cached models of un-normalised data are not reused


def test_a_memory_mapped_npz_is_normalised_as_it_is_read(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.random((60, 2, 3, 3), dtype=np.float32), np.repeat(np.arange(3), 20)
    np.savez(tmp_path / "d.npz", x=x, y=y)  # stored: memory-mapped
    cfg = DataConfig(source="npz", path=tmp_path / "d.npz", normalize={"mean": [0.5, 0.1], "std": [0.25, 2.0]})
    s, raw = load_data(cfg, seed=0), load_data(cfg.model_copy(update={"normalize": None}), seed=0)
    want = (np.asarray(raw.test.x) - np.array([0.5, 0.1]).reshape(1, 2, 1, 1)) / np.array([0.25, 2.0]).reshape(1, 2, 1, 1)
    np.testing.assert_allclose(np.asarray(s.test.x), want, rtol=1e-6)
    np.testing.assert_allclose(s.test.x[3], want[3], rtol=1e-6)  # one row, too
    with pytest.raises(DataError, match=r"data.normalize has 1 mean/std value\(s\) but the data has 2 channels"):
        load_data(cfg.model_copy(update={"normalize": cfg.normalize.model_copy(update={"mean": [0.5], "std": [1.0]})}),
                  seed=0)


def test_class_names_defaults(tmp_path):
    assert load_data(DataConfig(), seed=0).class_names == tuple(str(i) for i in range(10))
    folder = images(tmp_path / "imgs", {"zebra": [(0, 0, 0)] * 3, "ant": [(9, 9, 9)] * 3})
    s = load_data(DataConfig(source="imagefolder", path=folder), seed=0)
    assert s.class_names == ("ant", "zebra")  # sorted folder names: label i is the i-th
    np.savez(tmp_path / "d.npz", x=np.zeros((9, 4), np.float32), y=np.arange(9) % 3)
    assert load_data(DataConfig(source="npz", path=tmp_path / "d.npz"), seed=0).class_names == ("0", "1", "2")
    given = load_data(DataConfig(source="npz", path=tmp_path / "d.npz", class_names=["x", "y", "z"]), seed=0)
    assert given.class_names == ("x", "y", "z")


def test_class_names_must_match_the_classes(tmp_path):
    with pytest.raises(DataError, match=r"data.class_names has 2 name\(s\), but the data has 10 classes \(labels 0..9\)"):
        load_data(DataConfig(class_names=["a", "b"]), seed=0)


def test_class_names_change_the_fingerprint():
    """The names travel into cached stage files' metadata: other names, other cache keys."""
    a = load_data(DataConfig(), seed=0)
    b = load_data(DataConfig(class_names=[f"c{i}" for i in range(10)]), seed=0)
    assert a.fingerprint != b.fingerprint


def test_bgr_channel_order(tmp_path):
    folder = images(tmp_path / "imgs", {"a": [(255, 0, 0)] * 3, "b": [(0, 0, 255)] * 3})
    rgb = load_data(DataConfig(source="imagefolder", path=folder), seed=0)
    bgr = load_data(DataConfig(source="imagefolder", path=folder, channel_order="bgr"), seed=0)
    red = rgb.train.x[rgb.train.y == 0][0]
    assert red[0].min() == 1 and red[2].max() == 0  # RGB: channel 0 is red
    np.testing.assert_array_equal(bgr.train.x, rgb.train.x[:, ::-1])
    assert preprocessing(recipe_with(source="imagefolder", path=str(folder), channel_order="bgr"), bgr)[
        "channel_order"] == "bgr"


# --- what travels with the files -------------------------------------------------------------------------------


def test_preprocessing_describes_the_data(tmp_path):
    recipe = recipe_with(image_size=16, channels=3, normalize={"mean": [0.1, 0.2, 0.3], "std": [1, 2, 3]},
                         class_names=[f"digit {i}" for i in range(10)])
    pre = preprocessing(recipe, load_data(recipe.data, seed=0))
    assert pre["layout"] == "NCHW" and pre["dtype"] == "float32" and pre["input_shape"] == ["batch", 3, 16, 16]
    assert pre["scale"] == 1 / 16 and pre["pixel_range"] == [0, 16]  # digits: grey levels 0..16
    assert pre["mean"] == [0.1, 0.2, 0.3] and pre["std"] == [1, 2, 3] and pre["normalized"] is True
    assert pre["normalization_in_graph"] is False and pre["channel_order"] == "gray x3"
    assert pre["class_names"] == [f"digit {i}" for i in range(10)]
    props = onnx_metadata(pre)
    assert json.loads(props["compress.preprocessing"]) == pre
    assert json.loads(props["class_names"]) == pre["class_names"] and props["input_layout"] == "NCHW"
    folder = images(tmp_path / "imgs", {"a": [(1, 2, 3)] * 3, "b": [(4, 5, 6)] * 3})
    recipe = recipe_with(source="imagefolder", path=str(folder))
    pre = preprocessing(recipe, load_data(recipe.data, seed=0))
    assert pre["scale"] == 1 / 255 and pre["mean"] == [0.0] * 3 and pre["std"] == [1.0] * 3 and not pre["normalized"]


def test_quantize_output_and_its_ort_file_carry_the_metadata(trained_cnn, as_artifact, make_ctx, splits):
    from compress.stages.export import ExportConfig, export
    from compress.stages.quantize import QuantizeConfig, quantize

    ctx = make_ctx()
    art = export(as_artifact(trained_cnn), ExportConfig(type="export", format=["onnx", "ort"]), ctx)
    out = quantize(art, QuantizeConfig(type="quantize", calibration={"samples": 32}), ctx)
    want = onnx_metadata(preprocessing(ctx.recipe, splits))
    for path in (out.path, out.info["ort_path"]):
        got = read_metadata(path)
        assert {k: got.get(k) for k in want} == want, path
    assert json.loads(read_metadata(out.info["ort_path"])["class_names"]) == [str(i) for i in range(10)]


def test_a_run_writes_model_json_and_the_report_key(tmp_path):
    """A tiny run (ExecuTorch left out for time: its file is read by test_pte_inputs_and_outputs): model.json's
    tensors are those the files report, the 8-bit .tflite's scale and zero point included; every .onnx and .ort
    of the run carries the metadata."""
    from compress.pipeline import run
    from compress.stages.export import installed_formats

    formats = [f for f in installed_formats() if f != "executorch"]

    recipe = parse_recipe({
        "name": "card", "baseline": "none",
        "data": {"normalize": {"mean": MEAN, "std": STD}, "class_names": [f"n{i}" for i in range(10)]},
        "teacher": {"model": {"arch": "cnn", "width": 4, "depth": 1}, "train": {"epochs": 1}},
        "student": {"model": {"arch": "cnn", "width": 4, "depth": 1}},
        "stages": [{"type": "export", "format": formats},
                   {"type": "quantize", "calibration": {"samples": 32}}],
        "bench": {"rounds": 3, "calls": 1, "batch": 2}})
    report = run(recipe, output=tmp_path, quiet=True)
    folder = tmp_path / "card"
    card = json.loads((folder / "model.json").read_text())
    assert card["preprocessing"] == report["preprocessing"]
    assert card["class_names"] == [f"n{i}" for i in range(10)] == card["preprocessing"]["class_names"]
    assert card["preprocessing"]["mean"] == MEAN and card["preprocessing"]["std"] == STD
    shipped = {"onnx": "model.onnx", "ort": "model.ort", "executorch": "model.pte", "litert": "model.tflite"}
    assert set(card["files"]) == {shipped[f] for f in formats}
    for name, entry in card["files"].items():
        real = io_details(folder / name)
        for kind in ("inputs", "outputs"):
            assert [{k: v for k, v in t.items() if k != "quantization"} for t in entry[kind]] == \
                [{k: v for k, v in t.items() if k != "quantization"} for t in real[kind]]
    if "model.tflite" in card["files"]:
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(folder / "model.tflite"))
        for kind, details in (("inputs", it.get_input_details()), ("outputs", it.get_output_details())):
            t, d = card["files"]["model.tflite"][kind][0], details[0]
            assert t["dtype"] == "int8" == np.dtype(d["dtype"]).name  # the 8-bit file has int8 input and output
            assert (t["quantization"]["scale"], t["quantization"]["zero_point"]) == (float(d["quantization"][0]),
                                                                                     int(d["quantization"][1]))
    want = onnx_metadata(card["preprocessing"])
    onnx_files = sorted(folder.rglob("*.onnx")) + sorted(folder.rglob("*.ort"))
    assert {"teacher.onnx", "model.onnx", "02_quantize_int8_static.onnx"} <= {p.name for p in onnx_files}
    for p in onnx_files:
        got = read_metadata(p) if p.suffix == ".ort" else {m.key: m.value for m in onnx.load(str(p)).metadata_props}
        assert {k: got.get(k) for k in want} == want, p.name


def test_pte_inputs_and_outputs(tmp_path):
    pytest.importorskip("executorch")
    import torch

    from compress.runtimes.executorch import export_pte

    path = export_pte(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)), (3, 2, 2), tmp_path / "m.pte", batch=2)
    assert io_details(path) == {"inputs": [{"name": None, "index": 0, "shape": [2, 3, 2, 2], "dtype": "float32"}],
                                "outputs": [{"name": None, "index": 0, "shape": [2, 3], "dtype": "float32"}]}
