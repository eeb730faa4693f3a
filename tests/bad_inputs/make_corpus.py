"""Writes the bad-input corpus: one folder per case with recipe.yaml, its files, and expected.txt.

    python tests/bad_inputs/make_corpus.py                  # every case
    python tests/bad_inputs/make_corpus.py npz_bzip2_bomb   # only the cases named

expected.txt holds the exact error message (``{dir}`` stands for the case folder); args.txt, when
present, holds extra command-line arguments. tests/test_bad_inputs.py checks every case with
`compress validate` and `compress run`: non-zero exit, that message, no output left behind.
The generated files are committed; rerun this script after changing a case.
"""

from __future__ import annotations

import io
import pickle
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent

BASE = """\
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
  - {type: export, format: onnx}
  - {type: quantize, mode: int8_static}
"""

CASES: dict[str, tuple[str, str]] = {}  # name -> (recipe text, expected message)
ONLY = set(sys.argv[1:])  # case names to (re)write; none: all


def case(name: str, recipe: str, expected: str, files: dict | None = None, args: str = "") -> None:
    CASES[name] = (recipe, expected)
    if ONLY and name not in ONLY:
        return
    folder = HERE / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()
    (folder / "recipe.yaml").write_text(recipe)
    (folder / "expected.txt").write_text(expected + "\n")
    if args:
        (folder / "args.txt").write_text(args + "\n")
    for fname, writer in (files or {}).items():
        writer(folder / fname)


def npz(x, y):
    return lambda p: np.savez(p, x=np.asarray(x, dtype=np.float32), y=np.asarray(y))


def with_data(name: str) -> str:
    return BASE.replace("  source: digits", f"  source: npz\n  path: {name}")


def state_dict_of(width: int, classes: int = 10, features: int = 64):
    from compress.models.zoo import mlp

    torch.manual_seed(0)
    return mlp((features,), classes, width=width, depth=1).state_dict()


def save_st(sd):
    from safetensors.torch import save_file

    return lambda p: save_file({k: v.contiguous() for k, v in sd.items()}, str(p))


def truncated(writer):
    def write(p):
        writer(p)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    return write


class _Evil:
    def __reduce__(self):  # runs `touch` when unpickled: must never happen
        import os
        return (os.system, (f"touch {HERE}/pickle_with_code/PWNED",))


def evil_pickle(p):
    with open(p, "wb") as f:
        torch.save({"weight": _Evil()}, f)


def teacher_weights(path: str) -> str:
    return BASE.replace("  train: {epochs: 1}", f"  weights: {path}")


rng = np.random.default_rng(0)
X4 = rng.random((40, 4)).astype(np.float32)
Y4 = np.arange(40) % 4

case("unknown_top_key", BASE.replace("teacher:", "teachr:"),
     "{dir}/recipe.yaml:5: teachr: unknown key 'teachr'; did you mean 'teacher'? valid keys: name, seed, data, teacher, "
     "student, stages, baseline, bench, output\n  also: {dir}/recipe.yaml:1: teacher: required key is missing")
case("misspelled_stage_key", BASE.replace("{type: distill, epochs: 1}", "{type: distill, epochs: 1, tempreature: 2}"),
     "{dir}/recipe.yaml:11: stages[0].tempreature: unknown key 'tempreature'; did you mean 'temperature'? valid keys: "
     "type, temperature, alpha, generations, peers, loss, teachers, chain, augment, epochs, lr, batch_size, "
     "weight_decay, init_from_teacher")
case("misspelled_nested_key", BASE.replace("{type: quantize, mode: int8_static}",
                                           "{type: quantize, mode: int8_static, calibration: {metod: entropy}}"),
     "{dir}/recipe.yaml:13: stages[2].calibration.metod: unknown key 'metod'; did you mean 'method'? valid keys: "
     "method, samples, batch_size")
case("unknown_stage_type", BASE.replace("type: distill", "type: distil"),
     "{dir}/recipe.yaml:11: stages[0].type: unknown stage type 'distil'; did you mean 'distill'? valid choices: "
     "distill, export, finetune, prune, qat, quantize, train")
case("stage_without_type", BASE.replace("{type: distill, epochs: 1}", "{epochs: 1}"),
     "{dir}/recipe.yaml:11: stages[0].type: stage needs a 'type'; valid choices: distill, export, finetune, prune, qat, quantize, train")
case("wrong_type_width", BASE.replace("width: 16", "width: wide"),
     "{dir}/recipe.yaml:6: teacher.model.width: Input should be a valid integer, unable to parse string as an integer (got 'wide')")
case("fractional_epochs", BASE.replace("{type: distill, epochs: 1}", "{type: distill, epochs: 2.5}"),
     "{dir}/recipe.yaml:11: stages[0].epochs: Input should be a valid integer, got a number with a fractional part (got 2.5)")
case("wrong_type_stages", BASE.replace("stages:\n  - {type: distill, epochs: 1}\n  - {type: export, format: onnx}\n"
                                       "  - {type: quantize, mode: int8_static}", "stages: distill"),
     "{dir}/recipe.yaml:10: stages: Input should be a valid list (got 'distill')")
case("ratio_above_one", BASE.replace("{type: distill, epochs: 1}", "{type: distill, epochs: 1}\n  - {type: prune, ratio: 1.5}"),
     "{dir}/recipe.yaml:12: stages[1].ratio: Input should be less than 1 (got 1.5)")
case("temperature_zero", BASE.replace("{type: distill, epochs: 1}", "{type: distill, epochs: 1, temperature: 0}"),
     "{dir}/recipe.yaml:11: stages[0].temperature: Input should be greater than 0 (got 0)")
case("alpha_above_one", BASE.replace("{type: distill, epochs: 1}", "{type: distill, epochs: 1, alpha: 2}"),
     "{dir}/recipe.yaml:11: stages[0].alpha: Input should be less than or equal to 1 (got 2)")
case("zero_epochs", BASE.replace("{type: distill, epochs: 1}", "{type: distill, epochs: 0}"),
     "{dir}/recipe.yaml:11: stages[0].epochs: Input should be greater than or equal to 1 (got 0)")
case("bad_importance", BASE.replace("{type: distill, epochs: 1}", "{type: distill, epochs: 1}\n  - {type: prune, ratio: 0.3, importance: l3}"),
     "{dir}/recipe.yaml:12: stages[1].importance: invalid value 'l3'; valid choices: l1, l2, taylor, bn_scale")
case("bad_quantize_mode", BASE.replace("mode: int8_static", "mode: int3"),
     "{dir}/recipe.yaml:13: stages[2].mode: invalid value 'int3'; valid choices: int8_static, int8_dynamic, int4_weight_only, "
     "mixed, auto")
case("accuracy_level_auto_with_int8", BASE.replace("mode: int8_static", "mode: int8_static, accuracy_level: auto"),
     "{dir}/recipe.yaml:13: stages[2].accuracy_level: accuracy_level 'auto' is for mode int4_weight_only (mode auto "
     "tries every level itself); with mode int8_static use 0, 1, 2, 3 or 4 (got 'auto')")
case("export_after_qat", BASE.replace("  - {type: export, format: onnx}", "  - {type: qat, epochs: 1}\n  - {type: export, format: onnx}"),
     "{dir}/recipe.yaml:13: stages[2]: stage 'export' cannot follow stage 'qat' (stages[1]): 'export' takes torch "
     "models but stage 'qat' (stages[1]) produces onnx models; put 'export' before it")
case("split_leaves_no_training_data", BASE.replace("  source: digits", "  source: digits\n  split: {val: 0.6, test: 0.4}"),
     "{dir}/recipe.yaml:5: data.split: val + test must leave data for training (got 0.6 + 0.4 >= 1)")
case("no_stages", BASE.split("stages:")[0],
     "{dir}/recipe.yaml:1: stages: required key is missing")
case("empty_stages", BASE.split("stages:")[0] + "stages: []\n",
     "{dir}/recipe.yaml:10: stages: List should have at least 1 item after validation, not 0")
case("yaml_python_tag", BASE.replace("{arch: mlp, width: 16, depth: 1}", '!!python/object/apply:os.system ["touch PWNED"]'),
     "{dir}/recipe.yaml:6: YAML tags that run code are refused ('tag:yaml.org,2002:python/object/apply:os.system'); recipes are plain data")
case("empty_recipe", "", "{dir}/recipe.yaml: recipe is empty")
case("recipe_is_a_list", "- distill\n- prune\n", "{dir}/recipe.yaml:1: a recipe is a YAML mapping of keys (got list)")
case("path_traversal_name", BASE.replace("name: bad", "name: ../../etc"),
     "{dir}/recipe.yaml:1: name: String should match pattern '^[A-Za-z0-9][A-Za-z0-9._-]*$' (got '../../etc')")
case("prune_after_export", BASE.replace("  - {type: quantize, mode: int8_static}", "  - {type: prune, ratio: 0.3}"),
     "{dir}/recipe.yaml:13: stages[2]: stage 'prune' cannot follow stage 'export' (stages[1]): 'prune' takes torch models "
     "but stage 'export' (stages[1]) produces onnx models; put 'prune' before it")
case("quantize_before_export", BASE.replace("  - {type: export, format: onnx}\n  - {type: quantize, mode: int8_static}",
                                            "  - {type: quantize, mode: int8_static}\n  - {type: export, format: onnx}"),
     "{dir}/recipe.yaml:12: stages[1]: stage 'quantize' cannot follow stage 'distill' (stages[0]): 'quantize' takes onnx "
     "models but stage 'distill' (stages[0]) produces torch models; put 'quantize' after an export or qat stage")
case("npz_without_path", BASE.replace("source: digits", "source: npz"),
     "{dir}/recipe.yaml:3: data: source 'npz' needs a path")
case("missing_data_file", with_data("nothere.npz"),
     "{dir}/recipe.yaml:5: data.path: data file not found: {dir}/nothere.npz")
case("data_not_npz", with_data("data.npz"),
     "{dir}/recipe.yaml:5: data.path: {dir}/data.npz: not a readable npz file (not a zip archive; write it with numpy.savez)",
     {"data.npz": lambda p: p.write_text("x,y\n1,2\n")})
case("npz_without_labels", with_data("data.npz"),
     "{dir}/recipe.yaml:5: data.path: {dir}/data.npz: npz must hold arrays 'x' and 'y'; missing ['y'] (has ['x'])",
     {"data.npz": lambda p: np.savez(p, x=X4)})
case("empty_dataset", with_data("data.npz"),
     "{dir}/recipe.yaml:5: data.path: data ({dir}/data.npz): the dataset is empty",
     {"data.npz": npz(np.zeros((0, 4)), np.zeros((0,), dtype=np.int64))})
case("single_class", with_data("data.npz"),
     "{dir}/recipe.yaml:5: data.path: data ({dir}/data.npz): a classifier needs at least 2 classes (found only [0])",
     {"data.npz": npz(X4, np.zeros(40, dtype=np.int64))})
case("nan_in_data", with_data("data.npz"),
     "{dir}/recipe.yaml:5: data.path: data ({dir}/data.npz): x has NaN or inf values in 1 samples",
     {"data.npz": npz(np.where(np.arange(160).reshape(40, 4) == 7, np.nan, X4), Y4)})
case("negative_labels", with_data("data.npz"),
     "{dir}/recipe.yaml:5: data.path: data ({dir}/data.npz): labels must be >= 0 (found -1)",
     {"data.npz": npz(X4, Y4 - 1)})
case("labels_skip_a_class", with_data("data.npz"),
     "{dir}/recipe.yaml:5: data.path: data ({dir}/data.npz): labels must be 0..4 with every class present; missing [3]",
     {"data.npz": npz(X4, np.where(Y4 == 3, 4, Y4))})
case("float_labels", with_data("data.npz"),
     "{dir}/recipe.yaml:5: data.path: {dir}/data.npz: labels 'y' must be integers (got dtype float64)",
     {"data.npz": npz(X4, Y4 + 0.5)})
case("labels_column_vector", with_data("data.npz"),
     "{dir}/recipe.yaml:5: data.path: data ({dir}/data.npz): labels y must be a 1-d array of class ids (got shape (40, 1))",
     {"data.npz": npz(X4, Y4[:, None])})
case("too_few_samples_per_class", with_data("data.npz"),
     "{dir}/recipe.yaml:5: data.path: data ({dir}/data.npz): class 0 has 2 samples; a train/val/test split needs at least 3 "
     "per class (5 for this split)",
     {"data.npz": npz(X4[:10], np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 1]))})
case("cnn_on_flat_data", with_data("data.npz").replace("{arch: mlp, width: 16, depth: 1}", "{arch: cnn, width: 8, depth: 2}"),
     "{dir}/recipe.yaml:7: teacher.model: arch 'cnn' needs image input C x H x W (got input shape (4,)); use arch 'mlp'",
     {"data.npz": npz(X4, Y4)})
case("missing_teacher_weights", teacher_weights("teacher.safetensors"),
     "{dir}/recipe.yaml:7: teacher.weights: weights file not found: {dir}/teacher.safetensors")
case("truncated_safetensors", teacher_weights("teacher.safetensors"),
     "{dir}/recipe.yaml:7: teacher.weights: {dir}/teacher.safetensors: corrupt or truncated safetensors file "
     "(Error while deserializing header: incomplete metadata, file not fully covered)",
     {"teacher.safetensors": truncated(save_st(state_dict_of(16)))})
case("truncated_state_dict", teacher_weights("teacher.pt"),
     "{dir}/recipe.yaml:7: teacher.weights: {dir}/teacher.pt: corrupt or truncated checkpoint "
     "(OSError: [Errno 22] Invalid argument)",
     {"teacher.pt": truncated(lambda p: torch.save(state_dict_of(16), p))})
case("state_dict_keys_do_not_match", teacher_weights("teacher.safetensors"),
     "{dir}/recipe.yaml:7: teacher.weights: {dir}/teacher.safetensors: state dict does not match the model: missing keys "
     "['features.0.weight', 'features.1.weight', 'features.1.bias', 'features.1.running_mean', 'features.1.running_var'] ..., "
     "unexpected keys ['conv1.weight', 'fc.weight']",
     {"teacher.safetensors": save_st({"conv1.weight": torch.zeros(4, 1, 3, 3), "fc.weight": torch.zeros(10, 4)})})
case("teacher_for_other_input_shape", teacher_weights("teacher.safetensors"),
     "{dir}/recipe.yaml:7: teacher.weights: {dir}/teacher.safetensors: tensor shapes do not match the model: "
     "features.0.weight: file (16, 16) vs model (16, 64)",
     {"teacher.safetensors": save_st(state_dict_of(16, features=16))})
case("teacher_for_other_class_count", teacher_weights("teacher.safetensors"),
     "{dir}/recipe.yaml:7: teacher.weights: {dir}/teacher.safetensors: tensor shapes do not match the model: "
     "classifier.weight: file (3, 16) vs model (10, 16); classifier.bias: file (3,) vs model (10,)",
     {"teacher.safetensors": save_st(state_dict_of(16, classes=3))})
case("pickle_with_code", teacher_weights("teacher.pt"),
     "{dir}/recipe.yaml:7: teacher.weights: {dir}/teacher.pt: refused to load: the file holds pickled objects or code, "
     "not only tensors (it references posix.system); nothing in it was run. Save a state dict with "
     "safetensors.torch.save_file or torch.save(model.state_dict()).",
     {"teacher.pt": evil_pickle})
case("factory_module_missing", BASE.replace("{arch: mlp, width: 8, depth: 1}", "{factory: 'no_such_pkg.models:make'}"),
     "{dir}/recipe.yaml:9: student.model: factory 'no_such_pkg.models:make': cannot import module 'no_such_pkg.models' "
     "(No module named 'no_such_pkg'); searched the recipe's folder {dir}, then sys.path: {syspath}")
case("factory_module_dependency_missing", BASE.replace("{arch: mlp, width: 8, depth: 1}", "{factory: 'nets_dep:make'}"),
     "{dir}/recipe.yaml:9: student.model: factory 'nets_dep:make': module 'nets_dep' ({dir}/nets_dep.py) was found, "
     "but importing it failed: ModuleNotFoundError: No module named 'no_such_dependency'",
     {"nets_dep.py": lambda p: p.write_text("import no_such_dependency  # noqa: F401\n\n\ndef make():\n    pass\n")})
case("factory_malformed", BASE.replace("{arch: mlp, width: 8, depth: 1}", "{factory: 'make_model'}"),
     "{dir}/recipe.yaml:9: student.model: factory must look like 'package.module:function' (got 'make_model')")
case("corrupt_onnx_teacher", BASE.replace("{type: distill, epochs: 1}", "{type: distill, epochs: 1, teachers: [{onnx: teacher.onnx}]}"),
     "{dir}/recipe.yaml:11: stages[0].teachers[0]: onnx teacher.onnx: InvalidProtobuf: [ONNXRuntimeError] : 7 : "
     "INVALID_PROTOBUF : Load model from {dir}/teacher.onnx failed:Protobuf parsing failed.", {"teacher.onnx": lambda p: p.write_bytes(b"\x08\x07garbage, not a protobuf")})
case("missing_onnx_teacher", BASE.replace("{type: distill, epochs: 1}", "{type: distill, epochs: 1, teachers: [{onnx: gone.onnx}]}"),
     "{dir}/recipe.yaml:11: stages[0].teachers[0]: teacher ONNX file not found: {dir}/gone.onnx")
case("logits_file_wrong_rows", BASE.replace("{type: distill, epochs: 1}", "{type: distill, epochs: 1, teachers: [{logits: logits.npy}]}"),
     "{dir}/recipe.yaml:11: stages[0].teachers[0]: {dir}/logits.npy: 5 rows, but the training split has 1079 samples "
     "and the data 1797", {"logits.npy": lambda p: np.save(p, np.zeros((5, 10), dtype=np.float32))})
case("output_is_a_file", BASE,
     "output path {dir}/not_a_folder is a file, not a folder; pass --output DIR",
     {"not_a_folder": lambda p: p.write_text("I am a file\n")}, args="--output {dir}/not_a_folder")
case("output_not_writable", BASE,
     "output folder /proc/compress-out/bad cannot be written (No such file or directory); pass --output DIR",
     args="--output /proc/compress-out")

case("prune_ratio_and_target", BASE.replace("{type: distill, epochs: 1}", "{type: distill, epochs: 1}\n  - {type: prune, ratio: 0.3, target: {macs: 0.25}}"),
     "{dir}/recipe.yaml:12: stages[1]: give either 'ratio' (fraction of channels to remove) or 'target' (what to reach), not both")
case("prune_target_unknown_goal", BASE.replace("{type: distill, epochs: 1}", "{type: distill, epochs: 1}\n  - {type: prune, target: {flops: 0.25}}"),
     "{dir}/recipe.yaml:12: stages[1].target.flops: unknown key 'flops'; valid keys: macs, params, latency_ms, speedup")
case("head_ratio_without_attention", BASE.replace("{type: distill, epochs: 1}", "{type: distill, epochs: 1}\n  - {type: prune, ratio: 0.3, head_ratio: 0.5}"),
     "{dir}/recipe.yaml:12: stages[1].head_ratio: 'head_ratio' removes attention heads of the built-in transformers "
     "(arch: transformer or text_transformer), and the student has none; drop head_ratio")
case("transformer_heads_do_not_divide_width", BASE.replace("{arch: mlp, width: 8, depth: 1}", "{arch: transformer, width: 30, heads: 4}"),
     "{dir}/recipe.yaml:9: student.model: arch 'transformer': width 30 must be a multiple of heads 4")



# --- issue 14, "Trust nothing on disk": bounded input handling and explicit user code ----------------
# The messages name the limits of compress/_limits.py.

LOL = "".join(f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9) if i else ', '.join(['lol'] * 9)}]\n" for i in range(10))
case("yaml_alias_bomb", BASE + LOL,  # "billion laughs": 10 lines, 9**9 strings once expanded
     "{dir}/recipe.yaml:14: YAML anchors and aliases (&name, *name) are refused (found anchor '&l0'); recipes are "
     "plain data: write the values out")
case("yaml_anchor_and_alias", BASE.replace("  model: {arch: mlp, width: 16, depth: 1}", "  model: &m {arch: mlp, width: 16, depth: 1}")
     .replace("  model: {arch: mlp, width: 8, depth: 1}", "  model: *m"),
     "{dir}/recipe.yaml:6: YAML anchors and aliases (&name, *name) are refused (found anchor '&m'); recipes are "
     "plain data: write the values out")
case("yaml_duplicate_top_key", BASE + "stages:\n  - {type: train, epochs: 1}\n",
     "{dir}/recipe.yaml:14: stages: duplicate key 'stages' (first at line 10)")
case("yaml_duplicate_nested_key", BASE.replace("  - {type: distill, epochs: 1}", "  - type: distill\n    epochs: 2\n    epochs: 5000"),
     "{dir}/recipe.yaml:13: stages[0].epochs: duplicate key 'epochs' (first at line 12)")
case("yaml_too_deep", BASE.replace("  model: {arch: mlp, width: 8, depth: 1}",
                                   "  model: {arch: mlp, width: 8, depth: 1, kwargs: {x: " + "[" * 100 + "]" * 100 + "}}"),
     "{dir}/recipe.yaml:9: recipe nests mappings and lists more than 64 levels deep; a recipe is a short list of settings")


def npz_raw(members: dict, compression: int = zipfile.ZIP_STORED, forge: dict | None = None):
    """An npz written member by member: ``members`` name -> .npy bytes (or an array); ``forge`` name -> the
    uncompressed size its zip directory entry claims (zip64 when above 4 GiB)."""
    def write(p):
        with zipfile.ZipFile(p, "w", compression=compression) as zf:
            for name, data in members.items():
                if isinstance(data, np.ndarray):
                    buf = io.BytesIO()
                    np.lib.format.write_array(buf, data, allow_pickle=True)
                    data = buf.getvalue()
                zf.writestr(name, data)
            for info in zf.filelist:
                if forge and info.filename in forge:
                    info.file_size = forge[info.filename]
                    if compression == zipfile.ZIP_STORED:
                        info.compress_size = forge[info.filename]
    return write


def npy_header(shape, descr="<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def bz2_zeros_npy(p, rows: int):
    """x.npy of ``rows`` x 4 float32 zeros, bzip2-compressed in the zip (written in 64 MiB pieces): a few KB
    of file for rows * 16 bytes of data."""
    header = npy_header((rows, 4))
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_BZIP2, compresslevel=9) as zf:
        info = zipfile.ZipInfo("x.npy")
        info.compress_type = zipfile.ZIP_BZIP2
        with zf.open(info, "w", force_zip64=True) as f:
            f.write(header)
            left, chunk = rows * 16, bytes(64 << 20)
            while left:
                f.write(chunk[:min(left, len(chunk))])
                left -= min(left, len(chunk))
        zf.writestr("y.npy", _npy(Y4))


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr)
    return buf.getvalue()


case("labels_one_billion", with_data("data.npz"),  # set(range(10**9)) in the old check
     "{dir}/recipe.yaml:5: data.path: data ({dir}/data.npz): labels must be 0..1000000000 with every class present; "
     "missing [4, 5, 6, 7, 8, 9, 10, 11, 12, 13] and 999,999,986 more",
     {"data.npz": npz(X4, np.where(np.arange(40) == 7, 10**9, Y4))})
case("labels_with_a_gap", with_data("data.npz"),
     "{dir}/recipe.yaml:5: data.path: data ({dir}/data.npz): labels must be 0..21 with every class present; "
     "missing [2, 3, 4, 5, 6, 7, 8, 9, 10, 11] and 8 more",
     {"data.npz": npz(X4, np.array([0, 1, 20, 21])[Y4])})
case("npz_string_labels", with_data("data.npz"),
     "{dir}/recipe.yaml:5: data.path: {dir}/data.npz: y.npy: dtype <U3 is not numeric; x and y must be bool, "
     "integer or float arrays",
     {"data.npz": lambda p: np.savez(p, x=X4, y=np.array(["cat", "dog"] * 20))})


class _Touch:
    def __reduce__(self):  # runs `touch` when unpickled: must never happen
        import os
        return (os.system, (f"touch {HERE}/npz_object_member/PWNED",))


case("npz_object_member", with_data("data.npz"),
     "{dir}/recipe.yaml:5: data.path: {dir}/data.npz: x holds Python objects (pickles), which are refused (member x.npy)",
     {"data.npz": npz_raw({"x.npy": np.array([_Touch()] * 40, dtype=object), "y.npy": Y4})})
case("npz_header_claims_more_rows", with_data("data.npz"),  # 40 rows of data under a header of a million
     "{dir}/recipe.yaml:5: data.path: {dir}/data.npz: x.npy: the header declares shape (1000000, 4) of float32 "
     "(16,000,000 bytes), but the member holds 640 bytes of data; the file is corrupt or forged (write it with numpy.savez)",
     {"data.npz": npz_raw({"x.npy": npy_header((1_000_000, 4)) + X4.tobytes(), "y.npy": _npy(Y4)})})
case("npz_member_over_budget", with_data("data.npz"),  # a stored member whose directory entry claims 9 GiB
     "{dir}/recipe.yaml:5: data.path: {dir}/data.npz: x.npy: the header declares shape (603979776, 4) of float32, "
     "9 GiB; the limit is 8 GiB per array",
     {"data.npz": npz_raw({"x.npy": npy_header((603_979_776, 4)) + X4.tobytes(), "y.npy": _npy(Y4)},
                          forge={"x.npy": len(npy_header((603_979_776, 4))) + (9 << 30)})})
case("npz_deflate_bomb", with_data("data.npz"),  # 80 MiB of zeros in 80 KB: deflate at its 1028 : 1 limit
     "{dir}/recipe.yaml:5: data.path: {dir}/data.npz: x.npy: 79.7 KiB would decompress to 80.0 MiB (1,028 : 1; real "
     "data compresses at most 1000 : 1); refused as a zip bomb before decompressing it",
     {"data.npz": lambda p: np.savez_compressed(p, x=np.zeros((80 << 16, 4), np.float32), y=Y4)})
case("npz_bzip2_bomb", with_data("data.npz"),  # 3 GiB of zeros in a few KB
     "{dir}/recipe.yaml:5: data.path: {dir}/data.npz: x.npy: 2.3 KiB would decompress to 3.0 GiB (1,342,177 : 1; real "
     "data compresses at most 1000 : 1); refused as a zip bomb before decompressing it",
     {"data.npz": lambda p: bz2_zeros_npy(p, 3 << 26)})
case("npz_bzip2_member", with_data("data.npz"),  # small, but bzip2: zipfile inflates a whole read of it at once
     "{dir}/recipe.yaml:5: data.path: {dir}/data.npz: x.npy: compressed with bzip2; an npz member is stored "
     "(numpy.savez) or deflated (numpy.savez_compressed), and nothing else is decompressed",
     {"data.npz": npz_raw({"x.npy": _npy(X4), "y.npy": _npy(Y4)}, compression=zipfile.ZIP_BZIP2)})


def imagefolder(images: dict[str, tuple[int, int]]):
    """``imgs/<class>/<name>.png``: 1-bit PNGs of zeros (a few KB even at 10000 x 10000)."""
    from PIL import Image

    def write(p):
        for rel, size in images.items():
            (p / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new("1", size).save(p / rel, optimize=True)
    return write


def with_images(extra: str = "") -> str:
    return BASE.replace("  source: digits", "  source: imagefolder\n  path: imgs" + extra)


case("image_above_the_pixel_budget", with_images(),
     "{dir}/recipe.yaml:5: data.path: data ({dir}/imgs): a/big.png is 10000 x 10000 = 100,000,000 pixels; the limit "
     "is 67,108,864 pixels (8192 x 8192) per image, checked before decoding",
     {"imgs": imagefolder({"a/big.png": (10000, 10000), "b/small.png": (8, 8)})})
case("image_folder_above_the_memory_budget", with_images(),  # 6 x 8000 x 8000 x 3 channels x 4 bytes = 4.3 GiB
     "{dir}/recipe.yaml:5: data.path: data ({dir}/imgs): 6 images of 8000 x 8000 x 3 channels decode to 4.3 GiB of "
     "float32; the limit is 4 GiB (an image folder is loaded into memory whole): set a smaller data.image_size, or "
     "save the data as an uncompressed npz (numpy.savez), which is memory-mapped",
     {"imgs": imagefolder({f"{c}/{i}.png": (8000, 8000) for c in "ab" for i in range(3)})})

# User code is explicit: a factory is the user's own function or nn.Module class, never the standard library's.
# The kwargs would create PWNED if the callable ran. The helper modules live in the case folder and are imported
# as bad_inputs.<case>.<module> (tests/ is on sys.path under pytest).
STUDENT = "  model: {arch: mlp, width: 8, depth: 1}"
STDLIB = ("is part of the Python standard library; a factory must be your own code (a function or nn.Module class "
          "in your package)")
case("factory_os_system", BASE.replace(STUDENT, "  model: {factory: 'os:system', kwargs: {command: touch PWNED}}"),
     f"{{dir}}/recipe.yaml:9: student.model: factory 'os:system': 'os' {STDLIB}")
case("factory_subprocess_run", BASE.replace(STUDENT, "  model: {factory: 'subprocess:run', kwargs: {args: [touch, PWNED]}}"),
     f"{{dir}}/recipe.yaml:9: student.model: factory 'subprocess:run': 'subprocess' {STDLIB}")
case("factory_builtins_eval", BASE.replace(STUDENT, "  model: {factory: 'builtins:eval', kwargs: {source: \"open('PWNED', 'w')\"}}"),
     f"{{dir}}/recipe.yaml:9: student.model: factory 'builtins:eval': 'builtins' {STDLIB}")


def module(text: str):
    return lambda p: p.write_text(text)


case("factory_reexports_os_system",
     BASE.replace(STUDENT, "  model: {factory: 'bad_inputs.factory_reexports_os_system.nets:system', "
                           "kwargs: {command: touch PWNED}}"),
     "{dir}/recipe.yaml:9: student.model: factory 'bad_inputs.factory_reexports_os_system.nets:system': 'system' "
     f"comes from 'posix', which {STDLIB}",
     {"nets.py": module("from os import system  # re-exported: still the standard library's\n")})
case("factory_is_an_int",
     BASE.replace(STUDENT, "  model: {factory: 'bad_inputs.factory_is_an_int.nets:WIDTH'}"),
     "{dir}/recipe.yaml:9: student.model: factory 'bad_inputs.factory_is_an_int.nets:WIDTH': module "
     "'bad_inputs.factory_is_an_int.nets' has no function 'WIDTH' (it is an int)",
     {"nets.py": module("WIDTH = 16\n")})
case("factory_is_not_a_module_class",
     BASE.replace(STUDENT, "  model: {factory: 'bad_inputs.factory_is_not_a_module_class.nets:Config'}"),
     "{dir}/recipe.yaml:9: student.model: factory 'bad_inputs.factory_is_not_a_module_class.nets:Config': 'Config' is a "
     "class that does not subclass torch.nn.Module; a factory is your own function that returns a torch.nn.Module, "
     "or an nn.Module class",
     {"nets.py": module("class Config:  # a plain class: calling it would build a Config, not a model\n"
                        "    def __init__(self, **kwargs):\n        self.kwargs = kwargs\n")})
case("factory_is_a_compiled_function", BASE.replace(STUDENT, "  model: {factory: 'numpy:zeros', kwargs: {shape: 3}}"),
     "{dir}/recipe.yaml:9: student.model: factory 'numpy:zeros': 'zeros' is a built-in function (compiled code), not a "
     "Python function; a factory is your own function that returns a torch.nn.Module, or an nn.Module class")


if __name__ == "__main__":
    written = [n for n in CASES if not ONLY or n in ONLY]
    print(f"{len(written)} of {len(CASES)} cases written to {HERE}")
