"""The report's plain-language notes: a quantized model that is not faster than its source is named."""

from __future__ import annotations

from compress.report import _notes


def entry(name, role, p50, batch_p50, errors=5, mode=None):
    return {"name": name, "role": role, "errors": errors, "info": {"mode": mode} if mode else {},
            "latency_ms": {"p50": p50}, "latency_batch_ms": {"p50": batch_p50}}


def test_quantized_model_slower_or_no_faster_than_its_source():
    models = [entry("teacher", "teacher", 0.3, 9.0), entry("scratch", "scratch", 0.05, 1.0, errors=4),
              entry("01_export", "stage", 0.0500, 1.00), entry("02_quantize", "stage", 0.0600, 0.99, mode="int8_static"),
              entry("final", "final", 0.0600, 0.99, errors=6)]
    notes = _notes(models)
    assert notes[0] == ("02_quantize (int8_static) is SLOWER than its fp32 source 01_export at batch 1, 1 thread: "
                        "p50 60.0 us vs 50.0 us (0.83x). On this CPU the fp32 model is the faster choice there.")
    assert notes[1] == ("02_quantize (int8_static) is no faster than its fp32 source 01_export at large batch, all "
                        "threads (p50 990.0 us vs 1000.0 us, 1.01x): it is smaller, not quicker, on this CPU.")
    assert notes[2].startswith("The final model makes more test errors (6) than the scratch student (4)")
    assert len(notes) == 3


def test_no_notes_when_quantization_pays_off():
    models = [entry("teacher", "teacher", 0.3, 9.0), entry("01_export", "stage", 0.05, 1.0),
              entry("02_quantize", "stage", 0.03, 0.5, mode="int8_static")]
    assert _notes(models) == []


def test_stage_details_renders_notes_and_tables():
    from compress.report import stage_details

    lines = stage_details({"notes": ["kept conv1 in fp32"],
                           "tables": [{"title": "sensitivity", "columns": ["layer", "drop"], "rows": [["conv1", 0.02]]}]})
    assert lines == ["- kept conv1 in fp32", "", "**sensitivity**", "", "| layer | drop |", "|---|---|", "| conv1 | 0.02 |"]
    assert stage_details({}) == []


def test_md_table_aligns_numbers_right_when_told_the_text_columns():
    from compress.report import md_table

    assert md_table(["name", "n"], [["a|b", 1]]) == "| name | n |\n|---|---|\n| a\\|b | 1 |"
    assert md_table(["name", "n"], [["a", 1]], left=("name",)).splitlines()[1] == "|---|---:|"


def test_rich_table_justifies_wraps_and_styles_by_column_and_row():
    from compress.report import rich_table

    table = rich_table("t", ["name", "n"], [["a", "1"], ["b", "2"]], left=("name",), no_wrap=("name",),
                       style=lambda row: "green" if row[0] == "b" else None)
    assert [(c.header, c.justify, c.no_wrap) for c in table.columns] == [("name", "left", True), ("n", "right", False)]
    assert [r.style for r in table.rows] == [None, "green"]


def test_chance_level_worked_by_hand():
    from compress.report import chance_level

    even = chance_level([50, 50])  # 1/K = majority share = 0.5; SE = sqrt(0.25 / 100) = 0.05
    assert even["level"] == 0.5 and abs(even["threshold"] - 0.65) < 1e-12
    skewed = chance_level([90, 5, 5])  # majority 0.9 beats 1/3; SE = sqrt(0.09 / 100) = 0.03
    assert skewed["level"] == 0.9 and abs(skewed["threshold"] - 0.99) < 1e-12


def test_a_scratch_baseline_at_chance_is_never_beaten_in_the_notes():
    models = [entry("teacher", "teacher", 0.3, 9.0), {**entry("scratch", "scratch", 0.05, 1.0, errors=4), "at_chance": True},
              entry("final", "final", 0.05, 1.0, errors=6)]
    notes = _notes(models)
    assert notes[0].startswith("AT CHANCE: scratch scored no better than guessing")
    assert not any("more test errors" in n for n in notes)  # no comparison against a broken baseline


def runtime_row(name, model, fmt, runtime, p50, batch_p50):
    return {"name": name, "model": model, "format": fmt, "runtime": runtime, "path": f"/run/{name}",
            "latency_ms": {"p50": p50}, "latency_batch_ms": {"p50": batch_p50}}


def test_every_slower_shipped_file_is_named_with_both_timings():
    from compress.report import _runtime_notes

    rows = [runtime_row("teacher.onnx", "teacher", "onnx", "ort", 0.3, 9.0),
            runtime_row("model.onnx", "final", "onnx", "ort", 0.040, 1.0),
            runtime_row("model.ort", "final", "ort", "ort-mobile", 0.160, 1.0),   # 4x slower than its source
            runtime_row("model.tflite", "final", "litert", "litert", 0.030, 2.0),  # slower at the large batch only
            runtime_row("04_export.onnx", "fp32", "onnx", "ort", 0.050, 1.5)]
    notes = _runtime_notes(rows)
    assert notes == [
        "model.ort (ort-mobile) is SLOWER than its fp32 .onnx counterpart 04_export.onnx at batch 1, 1 thread: "
        "p50 160.0 us vs 50.0 us (0.31x).",
        "model.ort (ort-mobile) is SLOWER than the .onnx it was converted from model.onnx at batch 1, 1 thread: "
        "p50 160.0 us vs 40.0 us (0.25x).",
        "model.tflite (litert) is SLOWER than its fp32 .onnx counterpart 04_export.onnx at large batch, all threads: "
        "p50 2000.0 us vs 1500.0 us (0.75x).",
    ]


def test_stages_section_is_one_for_every_task():
    """An assistant's stage (no file of its own: no facts) is named and marked cached; a prune stage gets its counts
    and channel table, then every scalar fact but those shown elsewhere; then its notes."""
    from compress.report import stages_markdown

    prune_info = {"params_before": 1200, "params_after": 800, "macs_before": 50000, "macs_after": 30000,
                  "bn_recalibration_samples": 64, "bn_recalibrated": "stale statistics", "seconds": 0.5,
                  "ort_path": "/run/stages/02_prune.ort", "formats": ["onnx"], "notes": ["round_to 8: conv2 kept all"],
                  "layers": [{"layer": "conv1", "before": 16, "after": 8, "cut": 0.5, "asked": 0.25, "deeper_than_asked": True},
                             {"layer": "head", "before": 10, "after": 10, "cut": 0.0, "asked": None}]}
    report = {"models": [{"name": "01_distill", "info": {"best_epoch": 3}}, {"name": "02_prune", "info": prune_info}],
              "stages": [{"index": 1, "type": "distill", "config": {"type": "distill", "steps": 20}, "cached": True,
                          "seconds": 0.12, "model": "assistant 1"},
                         {"index": 2, "type": "prune", "config": {"type": "prune", "ratio": 0.25}, "cached": False,
                          "seconds": 1.5}]}
    assert stages_markdown(report) == [
        "## Stages", "",
        "### 1. distill (assistant 1) (0.12 s, cached)", "", "`steps=20`", "", "",
        "### 2. prune (1.5 s)", "", "`ratio=0.25`", "",
        "params 1,200 -> 800; MACs 50,000 -> 30,000", "",
        "| layer | channels before | after | removed | asked |", "|---|---|---|---|---|",
        "| conv1 | 16 | 8 | 50% | 25% **deeper than asked** |", "| head | 10 | 10 | 0% | - |", "",
        "- bn_recalibration_samples: 64", "- round_to 8: conv2 kept all", ""]
    # the student's stage shows its file's facts; without a layer table (the LM's prune) the counts are facts too
    report["stages"][0].pop("model")
    report["models"][1]["info"] = {"params_before": 1200, "params_after": 800, "cached": False}
    assert stages_markdown(report) == [
        "## Stages", "", "### 1. distill (0.12 s, cached)", "", "`steps=20`", "", "- best_epoch: 3", "",
        "### 2. prune (1.5 s)", "", "`ratio=0.25`", "", "- params_before: 1200", "- params_after: 800", ""]


def test_head_of_report_md_is_one_for_every_task():
    from compress.report import head_markdown

    report = {"created": "2026-01-01T00:00:00+00:00", "run_seconds": 41.6,
              "versions": {"compress": "0.1.0", "torch": "2.5", "onnxruntime": "1.20"},
              "cpu": {"model": "EPYC", "cores": 2, "features": ["avx2", "avx512_vnni"]}}
    assert head_markdown(report, "tiny (language model)") == [
        "# compress report: tiny (language model)", "",
        "2026-01-01T00:00:00+00:00 · compress 0.1.0 · torch 2.5 · onnxruntime 1.20 · CPU EPYC (2 cores; avx2, "
        "avx512_vnni) · 42 s", ""]
    assert "(2 cores; no AVX2)" in head_markdown({**report, "cpu": {**report["cpu"], "features": []}}, "t")[2]
