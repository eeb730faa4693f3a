"""compress/_limits.py, and the recipe's bounds (compress/recipe.py ``read_yaml``): size, anchors and aliases,
nesting, node count, duplicate keys, and files that are not regular files."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from compress import _limits
from compress._limits import MAX_RECIPE_BYTES, MAX_YAML_DEPTH, file_kind, fmt_bytes, regular_file
from compress.cli import cli
from compress.errors import DataError, RecipeError
from compress.recipe import load_recipe, read_yaml
from fifo_guard import never_opened

RECIPE = """\
name: bad
seed: 0
data:
  source: digits
teacher:
  model: {arch: mlp, width: 16, depth: 1}
  train: {epochs: 1}
student:
  model: {arch: mlp, width: 8, depth: 1}
stages:
  - {type: distill, epochs: 1}
"""


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(RecipeError) as info:
        read_yaml(path)
    return str(info.value).replace(str(path.parent) + "/", "")


# --- _limits ----------------------------------------------------------------------------------------


def test_every_name_in_all_exists_and_limits_are_positive():
    for name in _limits.__all__:
        value = getattr(_limits, name)
        assert callable(value) or (isinstance(value, int) and value > 0), name


@pytest.mark.parametrize("n, text", [(0, "0 B"), (812, "812 B"), (1024, "1 KiB"), (1536, "1.5 KiB"),
                                     (4 << 30, "4 GiB"), ((9 << 30) + 128, "9.0 GiB"), (3 << 50, "3 PiB")])
def test_fmt_bytes(n, text):
    assert fmt_bytes(n) == text


def test_regular_file_and_a_symlink_to_one_pass(tmp_path):
    (tmp_path / "a.txt").write_text("hi")
    (tmp_path / "link.txt").symlink_to(tmp_path / "a.txt")
    assert regular_file(tmp_path / "a.txt").st_size == 2
    assert regular_file(tmp_path / "link.txt").st_size == 2


def test_fifo_socket_device_directory_and_broken_link_are_named(tmp_path):
    os.mkfifo(tmp_path / "x.png")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "s.png"))
    (tmp_path / "dev.png").symlink_to("/dev/null")
    (tmp_path / "gone.png").symlink_to(tmp_path / "nothing")
    (tmp_path / "dir.png").mkdir()
    try:
        with never_opened(tmp_path / "x.png"):
            for name, message in [("x.png", "x.png is a FIFO, not a regular file"),
                                  ("s.png", "s.png is a socket, not a regular file"),
                                  ("dev.png", "dev.png is a character device, not a regular file"),
                                  ("dir.png", "dir.png is a directory, not a regular file"),
                                  ("gone.png", "gone.png does not exist (a broken symbolic link)")]:
                with pytest.raises(DataError) as info:
                    regular_file(tmp_path / name, name)
                assert str(info.value) == message
    finally:
        sock.close()


def test_regular_file_raises_the_callers_error_class(tmp_path):
    os.mkfifo(tmp_path / "r.yaml")
    with never_opened(tmp_path / "r.yaml"), pytest.raises(RecipeError, match="is a FIFO"):
        regular_file(tmp_path / "r.yaml", error=RecipeError)


def test_file_kind():
    assert file_kind(stat.S_IFREG | 0o644) == "a regular file"
    assert file_kind(stat.S_IFBLK) == "a block device"
    assert file_kind(stat.S_IFLNK) == "a symbolic link"


# --- the recipe file --------------------------------------------------------------------------------


def _padded(size: int) -> str:
    """RECIPE with a comment line that makes it exactly ``size`` bytes."""
    pad = size - len(RECIPE) - len("# \n")
    return RECIPE + "# " + "x" * pad + "\n"


def test_a_recipe_of_exactly_the_limit_is_read(tmp_path):
    path = write(tmp_path, _padded(MAX_RECIPE_BYTES))
    assert path.stat().st_size == MAX_RECIPE_BYTES
    data, _ = read_yaml(path)
    assert data["name"] == "bad"


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_recipe_over_1_mb_is_refused_before_parsing(tmp_path, command):
    path = write(tmp_path, _padded(1_100_000))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, [command, str(path), "--output", str(out)])
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: {path}: recipe file is 1,100,000 bytes (1.0 MiB); the limit is 1,000,000 "
                                     "bytes (1 MB): a recipe is a short list of settings")
    assert not out.exists()


def test_a_recipe_that_is_a_fifo_is_refused_without_opening_it(tmp_path):
    os.mkfifo(tmp_path / "recipe.yaml")
    with never_opened(tmp_path / "recipe.yaml"):
        assert error_of(tmp_path / "recipe.yaml") == "recipe.yaml: recipe path is a FIFO, not a regular file"


def test_directory_and_missing_recipe_keep_their_messages(tmp_path):
    (tmp_path / "d.yaml").mkdir()
    assert error_of(tmp_path / "d.yaml") == "d.yaml: recipe path is a directory, not a YAML file"
    assert error_of(tmp_path / "none.yaml") == "none.yaml: recipe file not found"


def test_non_utf8_keeps_its_message(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(b"name: \xff\n")
    assert error_of(path) == "recipe.yaml: recipe is not UTF-8 text (invalid start byte at byte 6)"


# --- anchors, aliases, nesting, node count -----------------------------------------------------------


@pytest.mark.parametrize("text, found, line", [
    ("name: &n bad\n", "anchor '&n'", 1),
    ("name: x\nseed: 0\nother: *undefined\n", "alias '*undefined'", 3),  # refused before composing
    ("a: {b: 1}\nc:\n  - &s [1, 2]\n", "anchor '&s'", 3),
    ("a: &m {x: 1}\nb:\n  <<: *m\n", "anchor '&m'", 1),  # merge keys need aliases: refused with them
])
def test_anchors_and_aliases_are_refused_at_their_line(tmp_path, text, found, line):
    assert error_of(write(tmp_path, text)) == (
        f"recipe.yaml:{line}: YAML anchors and aliases (&name, *name) are refused (found {found}); recipes are plain "
        "data: write the values out")


def test_an_lm_recipe_is_bounded_too(tmp_path):
    path = write(tmp_path, "task: lm\nname: x\nmodel: &m {layers: 2}\n")
    with pytest.raises(RecipeError, match=r"recipe.yaml:3: YAML anchors and aliases"):
        load_recipe(path)
    path = write(tmp_path, "task: lm\nname: x\nname: y\n")
    with pytest.raises(RecipeError, match=r"recipe.yaml:3: name: duplicate key 'name' \(first at line 2\)$"):
        load_recipe(path)


def test_nesting_up_to_the_limit_is_read_one_more_level_is_refused(tmp_path):
    inner = MAX_YAML_DEPTH - 1  # the top-level mapping is the first level
    data, _ = read_yaml(write(tmp_path, "x: " + "[" * inner + "]" * inner + "\n"))
    value, depth = data["x"], 1
    while value:
        value, depth = value[0], depth + 1
    assert depth == inner
    text = "a: 1\nx:\n  y: " + "[" * inner + "]" * inner + "\n"
    assert error_of(write(tmp_path, text)) == (
        "recipe.yaml:3: recipe nests mappings and lists more than 64 levels deep; a recipe is a short list of settings")


def test_thousands_of_levels_are_refused_not_a_recursion_error(tmp_path):
    assert "more than 64 levels deep" in error_of(write(tmp_path, "x: " + "[" * 5000 + "]" * 5000 + "\n"))


def test_too_many_nodes_are_refused_at_the_line_reached(tmp_path, monkeypatch):
    monkeypatch.setattr("compress.recipe.MAX_YAML_EVENTS", 50)
    text = "name: x\nitems:\n" + "".join(f"  - {i}\n" for i in range(100))  # event 51: item 43, line 46
    assert error_of(write(tmp_path, text)) == (
        "recipe.yaml:46: recipe has more than 50 YAML nodes (keys, values, brackets); a recipe is a short list of settings")


# --- duplicate keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("name: a\nseed: 0\nname: b\n", "recipe.yaml:3: name: duplicate key 'name' (first at line 1)"),
    ("stages:\n  - {type: distill, epochs: 2, epochs: 5000}\n",
     "recipe.yaml:2: stages[0].epochs: duplicate key 'epochs' (first at line 2)"),
    ("teacher:\n  model:\n    arch: cnn\n    width: 8\n    'width': 16\n",
     "recipe.yaml:5: teacher.model.width: duplicate key 'width' (first at line 4)"),
    ("a:\n  - x: 1\n  - x: 2\n    y: 3\n    x: 4\n", "recipe.yaml:5: a[1].x: duplicate key 'x' (first at line 3)"),
])
def test_duplicate_keys_name_both_lines(tmp_path, text, expected):
    assert error_of(write(tmp_path, text)) == expected


def test_the_same_key_in_different_mappings_is_fine(tmp_path):
    data, lines = read_yaml(write(tmp_path, "a: {x: 1}\nb: {x: 2}\nc:\n  - {x: 3}\n  - {x: 4}\n"))
    assert data == {"a": {"x": 1}, "b": {"x": 2}, "c": [{"x": 3}, {"x": 4}]}
    assert lines[("c", 1, "x")] == 5


def test_python_tags_keep_their_message(tmp_path):
    marker = tmp_path / "pwned"
    text = f'name: x\nmodel: !!python/object/apply:os.system ["touch {marker}"]\n'
    assert error_of(write(tmp_path, text)) == (
        "recipe.yaml:2: YAML tags that run code are refused ('tag:yaml.org,2002:python/object/apply:os.system'); "
        "recipes are plain data")
    assert not marker.exists()


def test_a_list_as_a_key_is_a_recipe_error_not_a_crash(tmp_path):
    assert error_of(write(tmp_path, "name: x\n? [a, b]\n: 1\n")) == "recipe.yaml:2: found unhashable key"


def test_crlf_line_ends_keep_the_line_numbers(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(b"name: a\r\nseed: 0\r\nname: b\r\n")
    assert error_of(path) == "recipe.yaml:3: name: duplicate key 'name' (first at line 1)"
