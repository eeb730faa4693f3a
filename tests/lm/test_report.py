"""compress/lm/report.py: the LM sections of the report, on hand-made models and generation rows."""

from compress.lm.report import slower_notes, targets


def _m(name, role, sha, bpb, size, **info):
    return {"name": name, "role": role, "sha256": sha * 64, "bits_per_byte": bpb, "size_bytes": size, "info": info}


MODELS = [_m("teacher", "teacher", "a", 2.0, 8_000_000), _m("scratch", "scratch", "b", 3.1, 500_000),
          _m("01_distill", "stage", "c", 3.0, 500_000), _m("02_export", "stage", "c", 3.0, 500_000),
          _m("03_quantize", "stage", "d", 3.01, 200_000, mode="int8_dynamic", tag="int8"),
          _m("04_quantize", "stage", "e", 3.02, 180_000, mode="int4_weight_only", tag="int4-b32-a4"),
          _m("final", "final", "e", 3.02, 180_000, mode="int4_weight_only", tag="int4-b32-a4")]
# generation rows carry the first model holding each file: 01_distill for the export's file
BENCH = [{"model": n, "threads": 1, "tokens_per_s": t} for n, t in
         (("teacher", 1000), ("scratch", 9000), ("01_distill", 10000), ("03_quantize", 8000), ("04_quantize", 11000))]


def test_a_quantized_file_slower_than_the_fp32_student_gets_a_note_with_both_speeds():
    notes = slower_notes(MODELS, BENCH)
    assert notes == ["03_quantize (int8) decodes slower than the fp32 student (02_export) at 1 thread: 8000 vs 10000 "
                     "tokens/s (0.80x), in the same interleaved session."]


def test_targets_find_the_student_s_speed_through_its_file():
    got = {t["target"].split(" (")[0].split(":")[0]: t for t in targets(MODELS, BENCH)}
    assert got["distilled student"]["met"] and got["distilled student"]["measured"] == "3.0000 vs 3.1000 (-0.1000)"
    assert got["INT4 student file >= 5x smaller than teacher fp32 ONNX"]["measured"].startswith("44.4x")
    assert got["student tokens/s at 1 thread >= 4x teacher's"]["measured"] == "10.00x (10000 vs 1000 tok/s)"
