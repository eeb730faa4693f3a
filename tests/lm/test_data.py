"""compress/lm/data.py: documents, the split by document, windows."""

import numpy as np
import pytest

from compress.errors import DataError
from compress.lm.data import Document, eval_windows, split_documents, stdlib_documents, text_documents


def test_split_by_document_has_no_overlap_and_is_seeded():
    docs = [Document(f"d{i}", bytes([65 + i % 26]) * (100 + i)) for i in range(40)]
    a = split_documents(docs, 0.1, 0.2, seed=3)
    names = {k: {d.name for d in v} for k, v in a.items()}
    assert not names["train"] & names["test"] and not names["train"] & names["val"] and not names["val"] & names["test"]
    assert sum(map(len, names.values())) == 40 and len(names["test"]) == 8 and len(names["val"]) == 4
    b = split_documents(docs, 0.1, 0.2, seed=3)
    assert [d.name for d in b["test"]] == [d.name for d in a["test"]]
    c = split_documents(docs, 0.1, 0.2, seed=4)
    assert [d.name for d in c["test"]] != [d.name for d in a["test"]]


def test_stdlib_corpus_is_sorted_and_capped():
    docs = stdlib_documents(300_000)
    names = [d.name for d in docs]
    assert names == sorted(names) and all(n.endswith(".py") for n in names)
    # capped: adding the next file would pass the cap (the first file always goes in)
    assert sum(len(d.data) for d in docs) <= 300_000 or len(docs) == 1


def test_text_folder_and_single_file(tmp_path):
    for i in range(4):
        (tmp_path / f"{i}.txt").write_text(f"document {i}\n" * 20)
    docs = text_documents(tmp_path, 10_000)
    assert [d.name for d in docs] == ["0.txt", "1.txt", "2.txt", "3.txt"]
    one = tmp_path / "book.txt"
    one.write_text("\n\n".join("para %d " % i * 300 for i in range(10)))
    parts = text_documents(one, 1_000_000)
    assert len(parts) >= 3 and b"".join(p.data for p in parts).count(b"para") == one.read_bytes().count(b"para")
    with pytest.raises(DataError, match="no .txt files"):
        text_documents(tmp_path / "0.txt" / "..", 10) if False else text_documents(_empty(tmp_path), 10)


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d


def test_eval_windows_cover_the_start_without_overlap():
    stream = np.arange(100, dtype=np.uint8)
    w = eval_windows(stream, 10, 1000)
    assert w.shape == (9, 11)
    assert (w[1, 0] == 10) and (w[0, -1] == 10)  # the next window starts at the previous window's target
    assert eval_windows(stream, 10, 20).shape == (2, 11)
