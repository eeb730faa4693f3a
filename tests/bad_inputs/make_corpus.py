"""Writes the bad-input corpus: one folder per case with recipe.yaml, its files, and expected.txt.

    python tests/bad_inputs/make_corpus.py

expected.txt holds the exact error message (``{dir}`` stands for the case folder); args.txt, when
present, holds extra command-line arguments. tests/test_bad_inputs.py checks every case with
`compress validate` and `compress run`: non-zero exit, that message, no output left behind.
The generated files are committed; rerun this script after changing a case.
"""

from __future__ import annotations

import pickle
import shutil
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


def case(name: str, recipe: str, expected: str, files: dict | None = None, args: str = "") -> None:
    CASES[name] = (recipe, expected)
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
     "type, temperature, alpha, generations, peers, loss, teachers, chain, epochs, lr, batch_size, weight_decay, "
     "init_from_teacher")
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
     "models but stage 'distill' (stages[0]) produces torch models; put 'quantize' before it")
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
     "(No module named 'no_such_pkg')")
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


if __name__ == "__main__":
    print(f"{len(CASES)} cases written to {HERE}")
