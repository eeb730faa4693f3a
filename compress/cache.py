"""Content-addressed cache of trained weights: a key is the hash of everything that decides the result."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from compress._io import atomic_path

__all__ = ["cache_key", "load_cached", "save_cached"]


def cache_key(*parts: Any) -> str:
    """sha256 of the JSON form of ``parts`` (configs, data fingerprint, seed, versions)."""
    import compress

    blob = json.dumps([compress.__version__, torch.__version__, *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def load_cached(folder: Path, key: str, model: torch.nn.Module) -> torch.nn.Module | None:
    """A copy of ``model`` (never ``model`` itself) with the weights saved under ``key``, or None."""
    path = folder / f"{key}.safetensors"
    if not path.exists():
        return None
    from safetensors.torch import load_model

    model = copy.deepcopy(model)
    try:
        load_model(model, str(path))  # strict; restores weights tied to a saved one (an HF model's head and embedding)
    except Exception:
        return None  # a stale or damaged entry is recomputed, never trusted
    return model.eval()


def save_cached(folder: Path, key: str, model: torch.nn.Module) -> Path:
    from safetensors.torch import save_model

    path = folder / f"{key}.safetensors"
    with atomic_path(path) as tmp:
        save_model(model, str(tmp), force_contiguous=True)  # save_file refuses tied weights (shared storage); save_model keeps one copy
    return path


class StageCache:
    """Stage outputs stored under ``<root>/stages/<key>/``, where the key hashes the input artifact's
    key, the stage type and resolved config, its position (it seeds the stage), the data and the
    versions. An entry is written to a temporary folder and renamed into place, so a run killed at
    any point leaves either a whole entry or none.
    """

    def __init__(self, root: Path, enabled: bool = True):
        self.root, self.enabled = root / "stages", enabled

    def has(self, key: str) -> bool:
        return self.enabled and (self.root / key / "artifact.json").exists()

    def load(self, key: str, template: torch.nn.Module, dest: Path):
        """The cached artifact for ``key`` (torch: loaded into a copy of ``template``; onnx: files
        copied into the folder ``dest`` under their original names), or None."""
        import shutil

        from compress.artifact import Artifact
        from compress.models.checkpoint import load_model

        entry = self.root / key
        meta_path = entry / "artifact.json"
        if not self.enabled or not meta_path.exists():
            return None
        meta = json.loads(meta_path.read_text())
        info = dict(meta["info"])
        model, path = None, None
        if meta["format"] == "torch":
            model = load_model(template, entry / "model.safetensors")
        else:
            path = dest / meta["onnx_name"]
            with atomic_path(path) as tmp:
                shutil.copyfile(entry / "model.onnx", tmp)
            if (entry / "model.ort").exists():
                ort = path.with_suffix(".ort")
                with atomic_path(ort) as tmp:
                    shutil.copyfile(entry / "model.ort", tmp)
                info["ort_path"] = str(ort)
            if (entry / "model.safetensors").exists():  # an export that keeps its torch model (for 8-bit .pte/.tflite)
                model = load_model(template, entry / "model.safetensors")
            files = {}
            for fmt, name in (info.get("files") or {}).items():  # runtime files (.ort, .pte, .tflite), by format
                src = entry / f"file{Path(name).suffix}"
                if src.exists():
                    with atomic_path(dest / Path(name).name) as tmp:
                        shutil.copyfile(src, tmp)
                    files[fmt] = str(dest / Path(name).name)
            if files:
                info["files"] = files
        return Artifact(meta["name"], meta["format"], model, path, meta["params"], meta["macs"], info,
                        tuple(meta["lineage"]), key)

    def save(self, key: str, art) -> None:
        import os
        import shutil
        import tempfile

        from compress.models.checkpoint import save_model

        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / key
        if final.exists():
            shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.root))
        try:
            if art.format == "torch":
                save_model(art.model, tmp / "model.safetensors")
            else:
                shutil.copyfile(art.path, tmp / "model.onnx")
                if art.info.get("ort_path"):
                    shutil.copyfile(art.info["ort_path"], tmp / "model.ort")
                if art.model is not None:
                    save_model(art.model, tmp / "model.safetensors")
                for name in (art.info.get("files") or {}).values():
                    shutil.copyfile(name, tmp / f"file{Path(name).suffix}")
            meta = {"name": art.name, "format": art.format, "params": art.params, "macs": art.macs,
                    "info": art.info, "lineage": list(art.lineage),
                    "onnx_name": Path(art.path).name if art.path else None}
            (tmp / "artifact.json").write_text(json.dumps(meta, default=str))
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)


def load_json(root: Path, kind: str, key: str):
    path = root / kind / f"{key}.json"
    return json.loads(path.read_text()) if path.exists() else None


def save_json(root: Path, kind: str, key: str, obj) -> None:
    from compress._io import write_json

    write_json(root / kind / f"{key}.json", obj)
