"""The runtime registry, generated over every registered runtime: each installed one loads a file of its
format made from the same trained CNN and gives torch's logits; a missing one names its pip extra."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compress.errors import CompressError, MissingExtraError
from compress.runtimes import RUNTIMES, installed, load, register_runtime, runtime_for
from compress.runtimes.base import Runner

FORMAT_OF = {"ort": "onnx", "ort-mobile": "ort", "executorch": "executorch", "litert": "litert"}


def make_file(fmt: str, model, folder):
    from compress._onnx import convert_to_ort, export_onnx
    from compress.stages.export import SUFFIX, write_runtime_file

    onnx_path = export_onnx(model, (1, 8, 8), folder / "m.onnx")
    if fmt == "onnx":
        return onnx_path
    if fmt == "ort":
        return convert_to_ort(onnx_path, folder / "m.ort")
    return write_runtime_file(fmt, model, (1, 8, 8), folder / f"m{SUFFIX[fmt]}")


def test_every_runtime_is_known_here():
    assert set(RUNTIMES) == set(FORMAT_OF)
    from compress.cli import RUNTIME_NAMES

    assert set(RUNTIME_NAMES) == set(RUNTIMES)  # the CLI lists them without importing the registry


@pytest.mark.parametrize("name", sorted(RUNTIMES))
def test_runtime_loads_and_matches_torch(name, trained_cnn, splits, tmp_path):
    if not installed(name):
        pytest.skip(f"{name} not installed (pip install 'compress[{RUNTIMES[name].extra}]')")
    path = make_file(FORMAT_OF[name], trained_cnn, tmp_path)
    assert runtime_for(path).name == name
    runner = load(path, threads=1)
    assert isinstance(runner, Runner) and runner.size_bytes == path.stat().st_size
    assert runner.input_shape == (1, 8, 8)
    x = splits.test.x[:37]  # not a multiple of any batch: static-batch files pad the last chunk
    with torch.no_grad():
        ref = trained_cnn(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(runner.predict(x), ref, atol=1e-4, rtol=0)
    out = runner.timer(x[:1])()
    assert out is not None


@pytest.mark.parametrize("name", sorted(n for n, s in RUNTIMES.items() if s.extra))
def test_missing_extra_names_the_pip_command(name, monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda mod, *a: None if mod == RUNTIMES[name].module else real(mod, *a))
    path = tmp_path / f"m{RUNTIMES[name].suffixes[0]}"
    path.write_bytes(b"\0")
    with pytest.raises(MissingExtraError, match=rf"pip install 'compress\[{RUNTIMES[name].extra}\]'"):
        load(path)


def test_unknown_suffix_and_duplicate_name(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"\0")
    with pytest.raises(CompressError, match=r"no runtime loads '\.bin' files; known: \.onnx \(ort\), \.ort \(ort-mobile\)"):
        load(path)
    with pytest.raises(CompressError, match="no such model file"):
        load(tmp_path / "absent.onnx")
    with pytest.raises(CompressError, match="runtime 'ort' loads .onnx files"):
        load(path, runtime="ort")
    with pytest.raises(ValueError, match="registered twice"):
        register_runtime("ort", suffixes=(".x",))(lambda p, t: None)
