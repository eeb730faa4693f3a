"""compress/cache.py: entries are verified on every hit; a damaged one is moved aside (never served, never
deleted); entries are never overwritten in place; claims are locks that follow no symlink and truncate nothing."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from compress._io import claim_file, inside
from compress.cache import MANIFEST, Cache, CorruptEntry
from compress.errors import UnsafePathError


class Tied(nn.Module):
    """An embedding and an output head sharing one weight, as Hugging Face causal LMs do."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight


@pytest.fixture
def cache(tmp_path):
    return Cache(tmp_path / ".cache")


def quarantined(cache: Cache) -> list[str]:
    q = cache.root / "quarantine"
    return sorted(p.name for p in q.iterdir()) if q.exists() else []


def test_put_then_get_round_trips_and_records_digests(cache):
    cache.put("eval", "ab12cd34", {"a.bin": b"hello", "b.json": b"{}"}, {"note": 1})
    entry = cache.get("eval", "ab12cd34")
    assert entry.read_bytes("a.bin") == b"hello" and entry.meta == {"note": 1}
    manifest = json.loads((cache.root / "eval" / "ab12cd34" / MANIFEST).read_text())
    assert manifest["files"]["a.bin"] == {"sha256": hashlib.sha256(b"hello").hexdigest(), "size": 5}
    assert cache.get("eval", "ffff0000") is None and cache.warnings == []


def test_tied_weights_round_trip(cache):
    torch.manual_seed(0)
    a = Tied()
    cache.put_weights("weights", "00112233", a)
    torch.manual_seed(1)
    fresh = Tied()
    b = cache.get_weights("weights", "00112233", fresh)
    assert b is not fresh and torch.equal(b.emb.weight, a.emb.weight)
    assert b.head.weight.data_ptr() == b.emb.weight.data_ptr()  # still one tensor
    assert not torch.equal(fresh.emb.weight, a.emb.weight)  # the template is left alone


def _entry(cache, name="a.bin"):
    cache.put("eval", "ab12cd34", {name: b"x" * 100, "data.json": b"[1]"}, {"k": "v"})
    return cache.root / "eval" / "ab12cd34"


@pytest.mark.parametrize("damage", ["flip", "truncate_manifest", "deep_manifest", "delete_file", "extra_file", "edit_meta",
                                    "traversal_name", "symlinked_file", "manifest_of_other_key"])
def test_a_damaged_entry_is_a_warned_miss_moved_aside(cache, tmp_path, damage):
    folder = _entry(cache)
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret")
    man_path = folder / MANIFEST
    man = json.loads(man_path.read_text())
    if damage == "flip":
        data = bytearray((folder / "a.bin").read_bytes())
        data[10] ^= 0xFF
        (folder / "a.bin").write_bytes(bytes(data))
    elif damage == "truncate_manifest":
        man_path.write_text(man_path.read_text()[:40])
    elif damage == "deep_manifest":
        man_path.write_text("[" * 100_000)  # nested past the JSON decoder's recursion limit
    elif damage == "delete_file":
        (folder / "a.bin").unlink()
    elif damage == "extra_file":
        (folder / "planted.onnx").write_bytes(b"?")
    elif damage == "edit_meta":
        man["meta"]["k"] = "other"
        man_path.write_text(json.dumps(man))
    elif damage == "traversal_name":
        man["files"]["../../outside.bin"] = {"sha256": hashlib.sha256(b"secret").hexdigest(), "size": 6}
        man_path.write_text(json.dumps(man))
    elif damage == "symlinked_file":
        (folder / "a.bin").unlink()
        (folder / "a.bin").symlink_to(outside)
    elif damage == "manifest_of_other_key":
        man["key"] = "ffffffff"
        man_path.write_text(json.dumps(man))
    assert cache.get("eval", "ab12cd34") is None
    assert not folder.exists(), "a damaged entry must be moved out of the way"
    [moved] = quarantined(cache)
    assert moved.startswith("eval.ab12cd34.")
    assert len(cache.warnings) == 1 and "cache entry eval/ab12cd34" in cache.warnings[0]
    assert "recomputing it" in cache.warnings[0] and "quarantine" in cache.warnings[0]
    assert outside.read_bytes() == b"secret"
    cache.put("eval", "ab12cd34", {"a.bin": b"x" * 100, "data.json": b"[1]"}, {"k": "v"})  # recomputed, stored again
    assert cache.get("eval", "ab12cd34").read_bytes("a.bin") == b"x" * 100


def test_existing_entries_are_never_overwritten(cache):
    folder = _entry(cache)
    inode = os.stat(folder / "a.bin").st_ino
    got = cache.put("eval", "ab12cd34", {"a.bin": b"y" * 100, "data.json": b"[2]"}, {"k": "w"})
    assert got.meta == {"k": "v"} and os.stat(folder / "a.bin").st_ino == inode  # the first writer's entry stays
    assert (folder / "a.bin").read_bytes() == b"x" * 100


def test_put_over_a_damaged_entry_moves_it_aside_first(cache):
    folder = _entry(cache)
    (folder / "a.bin").write_bytes(b"rot")
    cache.put("eval", "ab12cd34", {"a.bin": b"z" * 100}, {})
    assert cache.get("eval", "ab12cd34").read_bytes("a.bin") == b"z" * 100 and len(quarantined(cache)) == 1


def test_concurrent_writers_of_one_key_leave_one_whole_entry(cache):
    errors = []

    def write(i):
        try:
            cache.put("eval", "ab12cd34", {"a.bin": bytes([i]) * 50_000}, {"writer": i})
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    entry = cache.get("eval", "ab12cd34")
    assert entry.read_bytes("a.bin") == bytes([entry.meta["writer"]]) * 50_000
    assert sorted(p.name for p in (cache.root / "eval").iterdir()) == ["ab12cd34"]  # no temporary folders left


def test_reads_are_verified_as_they_happen(cache, tmp_path):
    folder = _entry(cache)
    entry = cache.get("eval", "ab12cd34")
    (folder / "a.bin").write_bytes(b"y" * 100)  # changed after verification
    with pytest.raises(CorruptEntry, match="changed on disk"):
        entry.read_bytes("a.bin")
    with pytest.raises(CorruptEntry, match="changed on disk"):
        entry.copy_to("a.bin", tmp_path / "copy.bin")
    assert not (tmp_path / "copy.bin").exists()


def test_a_read_only_cache_raises_instead_of_moving(tmp_path):
    Cache(tmp_path / "c").put("eval", "ab12cd34", {"a.bin": b"1"})
    (tmp_path / "c" / "eval" / "ab12cd34" / "a.bin").write_bytes(b"2")
    with pytest.raises(CorruptEntry, match="sha256 mismatch"):
        Cache(tmp_path / "c", read_only=True).get("eval", "ab12cd34")
    assert (tmp_path / "c" / "eval" / "ab12cd34").exists()


def test_disabled_cache_misses_but_still_stores(tmp_path):
    forced = Cache(tmp_path / "c", enabled=False)
    forced.put_json("eval", "ab12cd34", [1])
    assert forced.get_json("eval", "ab12cd34") is None
    assert Cache(tmp_path / "c").get_json("eval", "ab12cd34") == [1]


def test_claim_follows_no_symlink_and_truncates_nothing(cache, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (cache.root / "locks").mkdir(parents=True)
    (cache.root / "locks" / "stages.ab12cd34.lock").symlink_to(victim)
    with pytest.raises(UnsafePathError, match="is a symlink"):
        with cache.claim("stages", "ab12cd34"):
            pass
    assert victim.read_text() == "precious"


def test_a_second_claim_of_a_held_key_waits_or_declines(cache):
    with cache.claim("stages", "ab12cd34") as first:
        assert first is True
        with cache.claim("stages", "ab12cd34", blocking=False) as second:
            assert second is False
        with cache.claim("stages", "cd34ab12", blocking=False) as other:
            assert other is True  # another key is free
    with cache.claim("stages", "ab12cd34", blocking=False) as again:
        assert again is True


def test_claim_file_keeps_an_existing_file(tmp_path):
    lock = tmp_path / "x.lock"
    lock.write_text("not empty")
    with claim_file(lock):
        pass
    assert lock.read_text() == "not empty"


def test_inside_refuses_names_that_leave_the_root(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    assert inside(root, "run", "stages/01_x.onnx") == root / "run" / "stages" / "01_x.onnx"
    for bad in ("/etc/passwd", "..", "a/../../b", "", "a//b"):
        with pytest.raises(UnsafePathError):
            inside(root, bad)
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafePathError, match="symlink inside the output folder"):
        inside(root, "link", "x")
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    assert inside(tmp_path / "alias", "run") == tmp_path / "alias" / "run"  # the root itself may be a symlink


def test_stage_entry_with_a_foreign_file_name_is_refused(cache, tmp_path):
    """Even a manifest re-signed by hand cannot choose where a cached file is copied to."""
    from compress.artifact import Artifact

    src = tmp_path / "stages" / "02_quantize_int8_static.onnx"
    src.parent.mkdir()
    src.write_bytes(b"onnx bytes")
    cache.put_stage("ab12cd34", Artifact("quantize", "onnx", None, src, 1, 2, {"mode": "int8_static"}, ("student",)))
    dest = tmp_path / "run" / "stages"
    dest.mkdir(parents=True)
    art = cache.get_stage("ab12cd34", nn.Linear(1, 1), dest, "02_quantize")
    assert art.path == dest / "02_quantize_int8_static.onnx" and art.path.read_bytes() == b"onnx bytes"

    folder = cache.root / "stages" / "ab12cd34"
    man = json.loads((folder / MANIFEST).read_text())
    man["meta"]["stems"]["onnx"] = "../../../escaped"
    man["meta_sha256"] = hashlib.sha256(json.dumps(man["meta"], sort_keys=True).encode()).hexdigest()
    (folder / MANIFEST).write_text(json.dumps(man))
    assert cache.get_stage("ab12cd34", nn.Linear(1, 1), dest, "02_quantize") is None
    assert not list(tmp_path.rglob("escaped*")) and "not this stage's" in cache.warnings[-1]
