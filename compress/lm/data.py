"""Byte-level text corpora that exist offline: the Python standard library's own source, or your ``.txt`` files.

Documents (files, or paragraph groups of a single file) are split into train/val/test by a seeded
permutation *of documents*, so no test document contributes a byte to training. Tokens are bytes
(vocabulary 256): bits per byte is then simply the mean next-token loss in bits.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from compress.errors import DataError

__all__ = ["Document", "TextSplits", "stdlib_documents", "text_documents", "split_documents", "load_text"]

SEPARATOR = b"\n\n"  # between documents in a split's token stream


@dataclass(frozen=True)
class Document:
    name: str
    data: bytes


@dataclass(frozen=True)
class TextSplits:
    train: np.ndarray  # uint8 token streams
    val: np.ndarray
    test: np.ndarray
    docs: dict  # split -> list of document names
    digest: str  # content hash of the whole corpus (cache keys)

    def describe(self) -> dict:
        return {split: {"documents": len(self.docs[split]), "bytes": int(len(getattr(self, split)))}
                for split in ("train", "val", "test")} | {"digest": self.digest}


def stdlib_documents(max_bytes: int) -> list[Document]:
    """The standard library's top-level ``*.py`` files, sorted by name, until ``max_bytes`` is reached: fixed for a
    given Python version (the corpus digest goes into the report and the cache keys)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = _whole_files(sorted(root.glob("*.py")), root, max_bytes)
    if len(docs) < 3:
        raise DataError(f"the Python standard library at {root} has too few source files for a train/val/test split")
    return docs


def _whole_files(files: list[Path], root: Path, max_bytes: int) -> list[Document]:
    """``files`` in order, named by their path under ``root``, while they fit ``max_bytes`` (the first always)."""
    docs, total = [], 0
    for f in files:
        data = f.read_bytes()
        if total + len(data) > max_bytes and docs:
            break
        docs.append(Document(str(f.relative_to(root)), data))
        total += len(data)
    return docs


def _paragraph_groups(name: str, text: bytes, size: int = 4096) -> list[Document]:
    """One long file -> documents of whole paragraphs (blank-line separated), about ``size`` bytes each."""
    docs, cur = [], []
    for para in text.split(b"\n\n"):
        cur.append(para)
        if sum(len(p) + 2 for p in cur) >= size:
            docs.append(Document(f"{name}#{len(docs)}", b"\n\n".join(cur)))
            cur = []
    if cur:
        docs.append(Document(f"{name}#{len(docs)}", b"\n\n".join(cur)))
    return docs


def text_documents(path: Path, max_bytes: int) -> list[Document]:
    """A directory of ``.txt`` files (each a document, sorted, recursive) or one ``.txt`` file (paragraph groups)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise DataError(f"{path}: no .txt files in this folder")
        docs = _whole_files(files, path, max_bytes)
    elif path.is_file():
        docs = _paragraph_groups(path.name, path.read_bytes()[:max_bytes])
    else:
        raise DataError(f"{path}: no such file or folder")
    docs = [d for d in docs if d.data]
    if len(docs) < 3:
        raise DataError(f"{path}: {len(docs)} non-empty document(s); a train/val/test split by document needs at least 3 "
                        "(give a folder of .txt files, or a file with blank-line separated paragraphs)")
    return docs


def split_documents(docs: list[Document], val: float, test: float, seed: int) -> dict[str, list[Document]]:
    """Seeded split by document: at least one document in each split; test never overlaps train or val."""
    order = np.random.default_rng(seed).permutation(len(docs))
    n_test = max(1, round(len(docs) * test))
    n_val = max(1, round(len(docs) * val))
    if n_test + n_val >= len(docs):
        raise DataError(f"{len(docs)} documents cannot give val ({n_val}) and test ({n_test}) documents and keep some for training")
    pick = lambda idx: [docs[i] for i in sorted(idx)]  # noqa: E731 - keep corpus order within a split
    return {"test": pick(order[:n_test]), "val": pick(order[n_test:n_test + n_val]), "train": pick(order[n_test + n_val:])}


def _stream(docs: list[Document]) -> np.ndarray:
    return np.frombuffer(SEPARATOR.join(d.data for d in docs), dtype=np.uint8).copy()


def load_text(cfg, seed: int) -> TextSplits:
    """The recipe's ``data:`` -> byte streams per split."""
    docs = stdlib_documents(cfg.max_bytes) if cfg.source == "stdlib" else text_documents(cfg.path, cfg.max_bytes)
    parts = split_documents(docs, cfg.split.val, cfg.split.test, seed)
    h = hashlib.sha256()
    for d in docs:
        h.update(d.name.encode() + b"\0" + hashlib.sha256(d.data).digest())
    return TextSplits(train=_stream(parts["train"]), val=_stream(parts["val"]), test=_stream(parts["test"]),
                      docs={k: [d.name for d in v] for k, v in parts.items()}, digest=h.hexdigest()[:16])


def random_windows(stream: np.ndarray, batch: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """``batch`` random windows of ``length`` tokens (int64) from a token stream."""
    if len(stream) <= length:
        raise DataError(f"a split of {len(stream)} bytes is shorter than one window of {length} tokens")
    starts = torch.randint(0, len(stream) - length, (batch,), generator=gen).numpy()
    return torch.from_numpy(np.stack([stream[s:s + length] for s in starts]).astype(np.int64))


def eval_windows(stream: np.ndarray, length: int, max_tokens: int) -> np.ndarray:
    """Non-overlapping windows of ``length + 1`` tokens (input + next-token target) covering the start of
    a split, at most ``max_tokens`` predicted tokens: every model is scored on exactly the same bytes."""
    n = min((len(stream) - 1) // length, max(1, max_tokens // length))
    if n < 1:
        raise DataError(f"a split of {len(stream)} bytes is shorter than one window of {length + 1} tokens")
    return np.stack([stream[i * length:i * length + length + 1] for i in range(n)]).astype(np.int64)
