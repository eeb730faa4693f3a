"""Data from disk is bounded before it is read (compress/data/__init__.py, compress/data/text.py): regular files only,
labels checked without allocating by the largest label, images and image folders within budgets from their headers,
npz headers validated before anything is mapped or decompressed."""

from __future__ import annotations

import io
import os
import socket
import zipfile

import numpy as np
import pytest

from compress.data import _missing, load_data, peek_data
from compress.errors import DataError
from compress.recipe import DataConfig
from fifo_guard import never_opened

# --- regular files only ---------------------------------------------------------------------------


def images(root, names=("a/0.png", "a/1.png", "a/2.png", "b/0.png", "b/1.png", "b/2.png"), size=(6, 5)):
    from PIL import Image

    for i, rel in enumerate(names):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", size, color=20 * i).save(root / rel)
    return DataConfig(source="imagefolder", path=root, channels=1)


def test_a_fifo_named_like_an_image_is_refused_without_opening_it(tmp_path):
    cfg = images(tmp_path / "imgs")
    os.mkfifo(tmp_path / "imgs" / "a" / "x.png")
    with never_opened(tmp_path / "imgs" / "a" / "x.png"):
        with pytest.raises(DataError) as info:
            peek_data(cfg)
    assert str(info.value) == f"data ({tmp_path}/imgs): a/x.png is a FIFO, not a regular file"


def test_a_socket_and_a_device_named_like_images_are_refused(tmp_path):
    cfg = images(tmp_path / "imgs")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "imgs" / "b" / "s.png"))
    try:
        with pytest.raises(DataError, match=r"imgs\): b/s\.png is a socket, not a regular file$"):
            peek_data(cfg)
    finally:
        sock.close()
    (tmp_path / "imgs" / "b" / "s.png").unlink()
    (tmp_path / "imgs" / "a" / "zero.png").symlink_to("/dev/zero")  # would never end
    with pytest.raises(DataError, match=r"imgs\): a/zero\.png is a character device, not a regular file$"):
        peek_data(cfg)


def test_a_symlink_to_an_image_is_read_and_a_folder_named_like_one_is_skipped(tmp_path):
    cfg = images(tmp_path / "imgs")
    (tmp_path / "imgs" / "a" / "link.png").symlink_to(tmp_path / "imgs" / "b" / "0.png")
    (tmp_path / "imgs" / "a" / "folder.png").mkdir()
    (tmp_path / "imgs" / "b" / "notes.txt").write_text("not an image")
    s = load_data(cfg, seed=0)
    assert len(s.train) + len(s.val) + len(s.test) == 7


def test_a_fifo_npz_is_refused_without_opening_it(tmp_path):
    os.mkfifo(tmp_path / "data.npz")
    with never_opened(tmp_path / "data.npz"):
        with pytest.raises(DataError) as info:
            peek_data(DataConfig(source="npz", path=tmp_path / "data.npz"))
    assert str(info.value) == f"{tmp_path}/data.npz is a FIFO, not a regular file"


def test_a_fifo_in_a_text_folder_is_refused_without_opening_it(tmp_path):
    for c in ("a", "b"):
        (tmp_path / "txt" / c).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "txt" / c / f"{i}.txt").write_text(f"{c} {i} " * 40)
    os.mkfifo(tmp_path / "txt" / "b" / "pipe.txt")
    cfg = DataConfig(source="text", path=tmp_path / "txt", length=16, snippets_per_class=6)
    with never_opened(tmp_path / "txt" / "b" / "pipe.txt"):
        with pytest.raises(DataError) as info:
            load_data(cfg, seed=0)
    assert str(info.value) == f"data ({tmp_path}/txt): b/pipe.txt is a FIFO, not a regular file"
    (tmp_path / "txt" / "b" / "pipe.txt").unlink()
    (tmp_path / "txt" / "b" / "sub.txt").mkdir()  # a folder named like a file is walked, not read
    assert load_data(cfg, seed=0).num_classes == 2


# --- labels -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("classes, k, expected", [
    ([0, 2], 10, [1]),
    ([0, 1, 5, 6, 9], 10, [2, 3, 4, 7, 8]),
    ([0, 1, 5, 6, 9], 4, [2, 3, 4, 7]),
    ([3, 4], 10, [0, 1, 2]),
    ([0, 10**18], 3, [1, 2, 3]),  # no range(10**18): the gaps are read off the sorted labels
    ([0, 1, 2], 10, []),
])
def test_missing_classes_come_from_the_gaps(classes, k, expected):
    assert _missing(np.asarray(classes, np.int64), k) == expected


def test_a_huge_label_is_refused_at_once(tmp_path):
    y = np.arange(30) % 3
    y[4] = np.iinfo(np.int64).max
    np.savez(tmp_path / "d.npz", x=np.ones((30, 4), np.float32), y=y)
    with pytest.raises(DataError, match=r"labels must be 0\.\.9223372036854775807 with every class present; "
                                        r"missing \[3, 4, 5, 6, 7, 8, 9, 10, 11, 12\] and 9,223,372,036,854,775,794 more$"):
        load_data(DataConfig(source="npz", path=tmp_path / "d.npz"), seed=0)


# --- images: pixel and memory budgets, from the headers ---------------------------------------------------


def forbid_decoding(monkeypatch):
    """From now on, fail the test if any image is decoded (PIL's ``Image.open`` reads only the header)."""
    from PIL import Image

    def load(self):
        raise AssertionError(f"an image was decoded: {self.size}")

    monkeypatch.setattr(Image.Image, "load", load)


def test_an_image_above_the_pixel_budget_is_refused_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr("compress.data.MAX_IMAGE_PIXELS", 30)  # the 6 x 5 images are exactly at the limit
    cfg = images(tmp_path / "imgs")
    images(tmp_path / "imgs", names=("b/big.png",), size=(7, 5))
    forbid_decoding(monkeypatch)
    with pytest.raises(DataError) as info:
        peek_data(cfg)
    assert str(info.value) == (f"data ({tmp_path}/imgs): b/big.png is 7 x 5 = 35 pixels; the limit is 30 pixels "
                               "(8192 x 8192) per image, checked before decoding")


def test_an_image_at_the_pixel_budget_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr("compress.data.MAX_IMAGE_PIXELS", 30)
    assert peek_data(images(tmp_path / "imgs")) == ((1, 5, 6), 2)


def test_pils_own_bomb_limit_gets_the_same_message(tmp_path, monkeypatch):
    from PIL import Image

    cfg = images(tmp_path / "imgs")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # PIL raises above twice this, in Image.open
    with pytest.raises(DataError, match=r"imgs\): a/0\.png has 30 pixels; the limit is 67,108,864 pixels"):
        peek_data(cfg)


def test_an_image_folder_above_the_memory_budget_is_refused_before_decoding(tmp_path, monkeypatch):
    cfg = images(tmp_path / "imgs")  # 6 images x 1 channel x 5 x 6 x 4 bytes = 720 bytes
    forbid_decoding(monkeypatch)
    monkeypatch.setattr("compress.data.MAX_IMAGE_FOLDER_BYTES", 719)
    with pytest.raises(DataError, match=r"^data \(.*\): 6 images of 6 x 5 x 1 channels decode to 720 B of float32; "
                                        r"the limit is 719 B \(an image folder is loaded into memory whole\)"):
        peek_data(cfg)
    with pytest.raises(DataError, match="6 images of 16 x 16 x 1 channels decode to 6 KiB of float32"):
        peek_data(cfg.model_copy(update={"image_size": 16}))  # the output size counts, not the file's


def test_an_image_folder_at_the_memory_budget_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr("compress.data.MAX_IMAGE_FOLDER_BYTES", 720)
    assert peek_data(images(tmp_path / "imgs")) == ((1, 5, 6), 2)


def test_sizes_are_compared_from_the_headers_before_decoding(tmp_path, monkeypatch):
    cfg = images(tmp_path / "imgs")
    images(tmp_path / "imgs", names=("b/other.png",), size=(9, 9))
    forbid_decoding(monkeypatch)
    with pytest.raises(DataError, match=r"images differ in size \[\(1, 5, 6\), \(1, 9, 9\)\]; set data.image_size"):
        peek_data(cfg)


# --- npz headers ----------------------------------------------------------------------------------------


X, Y = np.ones((30, 4), np.float32), np.arange(30) % 3


def npy(arr) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr)
    return buf.getvalue()


def header(shape, descr="<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def zip_npz(path, members: dict, compression=zipfile.ZIP_STORED, claim: dict | None = None):
    """An npz written member by member; ``claim``: member -> the uncompressed size its directory entry states."""
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for info in zf.filelist:
            if claim and info.filename in claim:
                info.file_size = claim[info.filename]
                if compression == zipfile.ZIP_STORED:
                    info.compress_size = claim[info.filename]
    return DataConfig(source="npz", path=path)


def refused(cfg) -> str:
    with pytest.raises(DataError) as info:
        peek_data(cfg)
    return str(info.value).replace(f"{cfg.path}: ", "")


@pytest.mark.parametrize("dtype", [np.complex64, "U2", "S2", [("a", "<f4"), ("b", "<f4")], "M8[s]"])
def test_non_numeric_dtypes_are_refused(tmp_path, dtype):
    x = np.zeros((30, 4), dtype)
    cfg = zip_npz(tmp_path / "d.npz", {"x.npy": npy(x), "y.npy": npy(Y)})
    assert refused(cfg) == (f"x.npy: dtype {x.dtype} is not numeric; arrays must be bool, integer or float")


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int8, np.uint16, np.bool_])
def test_numeric_dtypes_are_read(tmp_path, dtype):
    cfg = zip_npz(tmp_path / "d.npz", {"x.npy": npy(X.astype(dtype)), "y.npy": npy(Y.astype(np.uint8))})
    assert peek_data(cfg) == ((4,), 3)


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_a_header_that_claims_more_or_fewer_rows_than_the_data_is_refused(tmp_path, compression):
    cfg = zip_npz(tmp_path / "d.npz", {"x.npy": header((31, 4)) + X.tobytes(), "y.npy": npy(Y)}, compression)
    assert refused(cfg) == ("x.npy: the header declares shape (31, 4) of float32 (496 bytes), but the member holds "
                            "480 bytes of data; the file is corrupt or forged (write it with numpy.savez)")
    cfg = zip_npz(tmp_path / "d.npz", {"x.npy": npy(X), "y.npy": header((29,), "<i8") + Y.astype(np.int64).tobytes()},
                  compression)
    assert refused(cfg).startswith("y.npy: the header declares shape (29,) of int64 (232 bytes), but the member holds 240")


def test_a_stored_member_that_runs_past_the_end_of_the_file_is_refused(tmp_path):
    data = header((1000, 4)) + X.tobytes()
    cfg = zip_npz(tmp_path / "d.npz", {"y.npy": npy(Y), "x.npy": data}, claim={"x.npy": len(header((1000, 4))) + 16000})
    assert refused(cfg).startswith("x.npy: the data runs past the end of the file (")


def test_a_member_over_the_budget_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("compress.data.MAX_NPY_BYTES", 479)
    cfg = zip_npz(tmp_path / "d.npz", {"x.npy": npy(X), "y.npy": npy(Y)})
    assert refused(cfg) == "x.npy: the header declares shape (30, 4) of float32, 480 B; the limit is 479 B per array"


def test_compression_ratio_is_checked_for_large_members_only(tmp_path, monkeypatch):
    zeros = np.zeros((4096, 4), np.float32)  # 64 KiB of zeros deflate ~1000 : 1
    np.savez_compressed(tmp_path / "d.npz", x=zeros, y=np.arange(4096) % 2)
    cfg = DataConfig(source="npz", path=tmp_path / "d.npz")
    assert peek_data(cfg) == ((4,), 2)  # below RATIO_CHECKED_FROM_BYTES: small, regular data is fine
    monkeypatch.setattr("compress.data.RATIO_CHECKED_FROM_BYTES", 1024)
    monkeypatch.setattr("compress.data.MAX_COMPRESSION_RATIO", 100)
    assert refused(cfg).startswith("x.npy: ")
    assert refused(cfg).endswith(" : 1; real data compresses at most 100 : 1); refused as a zip bomb before "
                                 "decompressing it")


@pytest.mark.parametrize("method, name", [(zipfile.ZIP_BZIP2, "bzip2"), (zipfile.ZIP_LZMA, "lzma")])
def test_members_compressed_other_than_deflate_are_refused_unopened(tmp_path, monkeypatch, method, name):
    cfg = zip_npz(tmp_path / "d.npz", {"x.npy": npy(X), "y.npy": npy(Y)}, method)

    def no_open(*args, **kwargs):
        raise AssertionError("the member was opened")

    monkeypatch.setattr(zipfile.ZipFile, "open", no_open)
    assert refused(cfg) == (f"x.npy: compressed with {name}; an npz member is stored (numpy.savez) or deflated "
                            "(numpy.savez_compressed), and nothing else is decompressed")


def test_a_garbage_header_is_named(tmp_path):
    cfg = zip_npz(tmp_path / "d.npz", {"x.npy": b"\x93NUMPY\x01\x00" + b"\xff" * 40, "y.npy": npy(Y)})
    assert refused(cfg).startswith("x.npy: not a valid .npy array header (")


def test_savez_and_savez_compressed_files_still_load(tmp_path):
    for save in (np.savez, np.savez_compressed):
        save(tmp_path / "d.npz", x=X, y=Y)
        s = load_data(DataConfig(source="npz", path=tmp_path / "d.npz"), seed=0)
        assert s.num_classes == 3 and len(s.train) + len(s.val) + len(s.test) == 30


# --- read_arrays: the other array files a recipe or a command names (teacher logits, bench --data) ----------


def test_read_arrays_validates_npy_headers_before_reading(tmp_path):
    from compress.data import read_arrays

    good = tmp_path / "good.npy"
    np.save(good, np.ones((5, 3), np.float32))
    assert read_arrays(good, ("logits",))["logits"].shape == (5, 3)
    forged = tmp_path / "forged.npy"
    forged.write_bytes(good.read_bytes().replace(b"(5, 3)", b"(9999999, 3)"))
    with pytest.raises(DataError, match=r"declares shape \(9999999, 3\) of float32 \(119,999,988 bytes\), but the file "
                                         r"holds \d+ bytes of data; the file is corrupt or forged"):
        read_arrays(forged, ("logits",))
    text = tmp_path / "text.npy"
    np.save(text, np.array(["ab", "cd"]))
    with pytest.raises(DataError, match="dtype <U2 is not numeric"):
        read_arrays(text, ("logits",))


def test_teacher_logits_and_bench_data_refuse_a_compressed_bomb(tmp_path):
    from click.testing import CliRunner

    from compress.cli import cli
    from compress.data import read_arrays

    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_BZIP2) as z:
        z.writestr("x.npy", npy(np.zeros((1000, 4), np.float32)))
    with pytest.raises(DataError, match="compressed with bzip2"):
        read_arrays(bomb, ("x",), optional=("y",))
    model = tmp_path / "m.onnx"
    model.write_bytes(b"unused: the data is refused first")
    r = CliRunner().invoke(cli, ["bench", str(model), "--data", str(bomb)])
    assert r.exit_code != 0 and "compressed with bzip2" in r.output
