"""ONNX plumbing shared by stages and the pipeline: export with a dynamic batch axis, .ort conversion, the
``metadata_props`` that carry preprocessing and class names (compress/preprocess.py), a file's inputs and outputs."""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from compress._io import atomic_path
from compress.errors import MissingExtraError, StageError

__all__ = ["export_onnx", "convert_to_ort", "set_metadata", "read_metadata", "io_details", "INPUT", "OUTPUT"]

INPUT, OUTPUT = "input", "logits"


def export_onnx(model: torch.nn.Module, input_shape: tuple[int, ...], path: Path, opset: int = 17,
                exporter: str = "torchscript", metadata: dict[str, str] | None = None) -> Path:
    """Export ``model`` (eval mode) with a dynamic batch axis; written atomically, with ``metadata`` (key -> text)
    in its ``metadata_props``."""
    if exporter == "dynamo":
        try:
            import onnxscript  # noqa: F401
        except ImportError:
            raise MissingExtraError("export with exporter 'dynamo'", "dynamo", "onnxscript") from None
    model = model.eval()
    example = torch.zeros(2, *input_shape)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if exporter == "dynamo":
                batch = torch.export.Dim("batch", min=1, max=65_536)
                with contextlib.redirect_stdout(io.StringIO()):
                    torch.onnx.export(model, (example,), str(tmp), dynamo=True, input_names=[INPUT],
                                      output_names=[OUTPUT], dynamic_shapes=({0: batch},), opset_version=max(opset, 18),
                                      external_data=False)
            else:
                # The TorchScript exporter: no onnxscript needed and ~20x faster on small models.
                torch.onnx.export(model, (example,), str(tmp), dynamo=False, input_names=[INPUT],
                                  output_names=[OUTPUT], dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                                  opset_version=opset, do_constant_folding=True)
        except Exception as exc:
            raise StageError(f"ONNX export failed ({exporter} exporter): {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
        if metadata:
            _stamp(tmp, metadata)
    return path


def _stamp(path: Path, props: dict[str, str]) -> None:
    """Set ``props`` in ``path``'s ``metadata_props`` in place (other keys kept)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for k, v in keep + sorted(props.items()):
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))


def set_metadata(path: Path, props: dict[str, str]) -> None:
    """Set ``props`` (key -> text) in an ONNX file's ``metadata_props``, atomically; the file is left untouched
    (same bytes) when they are already there."""
    if all(read_metadata(path).get(k) == v for k, v in props.items()):
        return
    with atomic_path(path) as tmp:
        shutil.copyfile(path, tmp)
        _stamp(tmp, props)


def read_metadata(path: Path) -> dict[str, str]:
    """An ONNX file's ``metadata_props`` (an ``.ort`` file's through onnxruntime, which keeps them)."""
    if Path(path).suffix == ".ort":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return dict(sess.get_modelmeta().custom_metadata_map)
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


_ORT_TYPES = {"float": "float32", "double": "float64", "float16": "float16", "bfloat16": "bfloat16"}


def io_details(path: Path) -> dict[str, list[dict]]:
    """The inputs and outputs of an ``.onnx`` or ``.ort`` file as onnxruntime loads it: name, shape (a string for a
    symbolic axis, e.g. ``batch``) and dtype. Files compress writes take and give float32 (quantized ONNX files
    quantize inside the graph), so there is no scale or zero point to apply."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def row(a) -> dict:
        kind = a.type[len("tensor("):-1] if a.type.startswith("tensor(") else a.type
        return {"name": a.name, "shape": [d if isinstance(d, int) else (d or "?") for d in a.shape],
                "dtype": _ORT_TYPES.get(kind, kind)}
    return {"inputs": [row(a) for a in sess.get_inputs()], "outputs": [row(a) for a in sess.get_outputs()]}


def convert_to_ort(onnx_path: Path, ort_path: Path) -> Path:
    """Convert to the ORT mobile format with onnxruntime's own tool (fixed, portable optimizations)."""
    import logging

    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp_dir:
        src = Path(tmp_dir) / "model.onnx"
        shutil.copyfile(onnx_path, src)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            convert_onnx_models_to_ort(src, Path(tmp_dir) / "out", optimization_styles=[OptimizationStyle.Fixed])
        produced = Path(tmp_dir) / "out" / "model.ort"
        if not produced.exists():
            raise StageError(f"ORT format conversion of {onnx_path.name} produced no file")
        with atomic_path(ort_path) as tmp:
            shutil.copyfile(produced, tmp)
    return ort_path
