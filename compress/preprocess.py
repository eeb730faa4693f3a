"""What an app must do to an input before a model of this run sees it, and what its outputs mean (for the app's
side: docs/runtimes.md, "Use the file in an app").

``preprocessing(recipe, splits)`` describes it; the same dict goes into the ``metadata_props`` of every ONNX file a
run writes (``onnx_metadata``; ``.ort`` files converted from it keep them), report.json, and ``<run>/model.json``
with every shipped file's input and output tensors (``write_model_card``). The data is preprocessed once, when it
is loaded (compress/data). Normalisation is not folded into the graph: the files take the normalised tensor, so
the app computes ``(pixel * scale - mean[c]) / std[c]`` itself.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["preprocessing", "onnx_metadata", "io_details", "write_model_card", "read_preprocessing",
           "MODEL_CARD", "CARD_VERSION"]

MODEL_CARD = "model.json"
CARD_VERSION = 1
FILE_FORMATS = {".onnx": "onnx", ".ort": "ort", ".pte": "executorch", ".tflite": "litert"}
RUNTIME_NAMES = {"onnx": "onnxruntime", "ort": "onnxruntime (ORT format, e.g. onnxruntime-mobile)",
                 "executorch": "ExecuTorch (XNNPACK delegate)", "litert": "LiteRT (TFLite interpreter)"}

# What the pixels of each source are before scaling (the scale maps them to [0, 1]).
_PIXELS = {"imagefolder": ([0, 255], 1 / 255, "decoded 8-bit pixels x/255"),
           "digits": ([0, 16], 1 / 16, "optdigits grey levels 0..16, x/16")}


def preprocessing(recipe, splits) -> dict:
    """The preprocessing of ``recipe``'s data as loaded into ``splits``: enough for an app to build the input tensor
    and name the outputs."""
    cfg, source = recipe.data, recipe.data.source
    shape = [int(d) for d in splits.input_shape]
    names = list(splits.class_names)
    out: dict = {"source": source, "input_name": "input", "input_shape": ["batch", *shape], "dtype": "float32"}
    if source in ("stdlib-text", "text"):
        out.update(kind="text", layout="NL", scale=1.0, mean=None, std=None,
                   steps=[f"take {shape[-1]} consecutive bytes of the text as stored (e.g. UTF-8); the model was "
                          "trained on full windows of a file's bytes, never padded",
                          "one float32 per byte, its value 0..255 (not scaled)"])
    else:
        images = len(shape) == 3
        pixel_range, scale, what = _PIXELS.get(source, (None, 1.0, "the values as generated, not scaled" if source ==
                                                         "mnist1d" else "the arrays as stored in the npz, not scaled"))
        norm = cfg.normalize
        channels = shape[0] if len(shape) >= 2 else None
        mean = list(norm.mean) if norm is not None else ([0.0] * channels if channels else None)
        std = list(norm.std) if norm is not None else ([1.0] * channels if channels else None)
        size = cfg.image_size
        out.update(kind="image" if images else ("signal" if len(shape) == 2 else "features"),
                   layout={3: "NCHW", 2: "NCL"}.get(len(shape), "NF"),
                   image_size=shape[1:] if images else None,
                   resize=(f"bilinear to {size} x {size}" if size else None) if source in _PIXELS else None,
                   channel_order=_channel_order(cfg, channels) if images else None,
                   pixel_range=pixel_range, scale=scale, scale_note=what, normalized=norm is not None,
                   mean=mean, std=std)
        steps = []
        if images and source in _PIXELS:
            steps.append(f"resize to {shape[2]} x {shape[1]} pixels (bilinear)" if size else
                         f"the images are {shape[2]} x {shape[1]} pixels")
            steps.append({"rgb": "RGB channel order", "bgr": "BGR channel order (channel 0 is blue)",
                          "gray": "one grey channel", "gray x3": "grey, the one channel repeated 3 times"}
                         [out["channel_order"]])
        steps.append(f"x = pixel * {scale:.8g} ({what})" if source in _PIXELS else f"x = {what}")
        if mean is not None:
            steps.append("x = (x - mean[c]) / std[c] for each channel c" + ("" if norm is not None else
                                                                              " (identity: no data.normalize)"))
        steps.append(f"float32, layout {out['layout']} (batch first)")
        out["steps"] = steps
    out.update(normalization_in_graph=False, class_names=names,
               output={"name": "logits", "shape": ["batch", len(names)],
                       "meaning": "one raw score (logit) per class, in class_names order; softmax gives probabilities"})
    return out


def _channel_order(cfg, channels: int | None) -> str | None:
    if cfg.source in _PIXELS:
        return "gray" if channels == 1 else {"imagefolder": cfg.channel_order or "rgb", "digits": "gray x3"}[cfg.source]
    return None


def onnx_metadata(pre: dict) -> dict[str, str]:
    """``metadata_props`` for an ONNX file: the whole description as JSON and a few flat keys an app can read."""
    flat = {"class_names": pre["class_names"], "input_layout": pre.get("layout"), "input_scale": pre.get("scale"),
            "input_mean": pre.get("mean"), "input_std": pre.get("std"), "channel_order": pre.get("channel_order"),
            "normalization_in_graph": False}
    out = {k: v if isinstance(v, str) else json.dumps(v) for k, v in flat.items() if v is not None}
    out["compress.preprocessing"] = json.dumps(pre, sort_keys=True)
    return out


def io_details(path: Path) -> dict[str, list[dict]]:
    """A model file's inputs and outputs read from the file by its own runtime (see each runtime's ``io_details``)."""
    fmt = FILE_FORMATS.get(Path(path).suffix)
    if fmt in ("onnx", "ort"):
        from compress._onnx import io_details as read
    elif fmt == "executorch":
        from compress.runtimes.executorch import io_details as read
    elif fmt == "litert":
        from compress.runtimes.litert import io_details as read
    else:
        raise ValueError(f"{path}: not a model file compress writes (.onnx, .ort, .pte, .tflite)")
    return read(path)


def _quantization_notes(io: dict) -> None:
    for kind, how in (("inputs", "q = clip(round(x / scale) + zero_point) to the dtype's range"),
                      ("outputs", "x = (q - zero_point) * scale")):
        for t in io[kind]:
            if "quantization" in t:
                t["quantization"]["apply"] = how


def write_model_card(recipe, splits, measured: list[dict], final_files: dict[str, str], out_dir: Path) -> None:
    """Stamp the preprocessing into every ONNX file the run wrote under ``out_dir`` that lacks it (the teacher,
    the scratch baseline, torch stages exported for measurement; files written by ``export`` and ``quantize``
    already carry it), then write ``out_dir/model.json`` atomically: the preprocessing, class names and the
    tensors of every file of the final model, with the sha256 of the stamped file."""
    from compress._io import write_json
    from compress._onnx import set_metadata
    from compress.cache import sha256_file

    pre = preprocessing(recipe, splits)
    props, out_dir = onnx_metadata(pre), Path(out_dir)
    paths = {Path(m["path"]) for m in measured} | {Path(p) for p in final_files.values()}
    for p in sorted(paths):
        if p.suffix == ".onnx" and p.is_file() and p.resolve().is_relative_to(out_dir.resolve()):
            set_metadata(p, props)
    entries = {}
    for fmt, path in final_files.items():
        path = Path(path)
        io = io_details(path)
        _quantization_notes(io)
        entries[path.relative_to(out_dir).as_posix() if path.is_relative_to(out_dir) else str(path)] = {
            "format": fmt, "runtime": RUNTIME_NAMES.get(fmt, fmt), "size_bytes": path.stat().st_size,
            "sha256": sha256_file(path),
            "metadata_in_file": fmt in ("onnx", "ort"),  # metadata_props; .pte and .tflite: this file only
            "static_batch": fmt in ("executorch", "litert"),
            **io}
    write_json(out_dir / MODEL_CARD, {"model_card_version": CARD_VERSION, "name": recipe.name, "task": "classify",
                                      "preprocessing": pre, "class_names": pre["class_names"], "files": entries})


def read_preprocessing(run_dir: Path) -> dict | None:
    """The ``preprocessing`` of a run folder's ``model.json`` (None when there is none): report.json's key."""
    try:
        card = json.loads((Path(run_dir) / MODEL_CARD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    pre = card.get("preprocessing") if isinstance(card, dict) else None
    return pre if isinstance(pre, dict) else None
