"""How a language-model run reads: the report's LM sections (targets, generation benchmark, samples), report.md,
report.png and the terminal tables. The report itself is compress.report's, the same schema as every task."""

from __future__ import annotations

from pathlib import Path

from compress.report import head_markdown, md_table, print_tables, rich_table, size_text, stages_markdown

__all__ = ["sections", "targets", "slower_notes", "markdown", "plot", "print_table", "student", "first_names"]


def student(models: list[dict]) -> dict | None:
    """The fp32 student: the last stage file that is not quantized (the export, or the last torch stage's file)."""
    return next((m for m in reversed(models) if m["role"] == "stage" and "mode" not in m.get("info", {})), None)


def _label(m: dict) -> str:
    tag = m.get("info", {}).get("tag")
    return f"{m['name']} ({tag})" if tag and m["role"] != "final" else m["name"]


def first_names(models: list[dict]) -> dict[str, str]:
    """sha256 -> the name of the first model holding that file, which names its bench row (files with the same sha256
    are measured once; an export equals the torch stage before it)."""
    return {m["sha256"]: m["name"] for m in reversed(models)}  # reversed: the first one is written last and wins


def targets(models: list[dict], bench: list[dict]) -> list[dict]:
    """Three targets, measured: distilled < scratch bits per byte; INT4 >= 5x smaller than the teacher's fp32 ONNX;
    student tokens/s at 1 thread >= 4x the teacher's."""
    by = {m["role"]: m for m in models if m["role"] in ("teacher", "scratch")}
    fp32, out = student(models), []
    if fp32 and "scratch" in by:
        s, c = fp32["bits_per_byte"], by["scratch"]["bits_per_byte"]
        out.append({"target": f"distilled student ({fp32['name']}): lower test bits/byte than scratch (same steps)",
                    "measured": f"{s:.4f} vs {c:.4f} ({s - c:+.4f})", "met": s < c})
    int4 = next((m for m in models if m.get("info", {}).get("mode") == "int4_weight_only"), None)
    if int4 and "teacher" in by:
        ratio = by["teacher"]["size_bytes"] / int4["size_bytes"]
        out.append({"target": f"INT4 student file >= 5x smaller than teacher fp32 ONNX ({_label(int4)})",
                    "measured": f"{ratio:.1f}x ({by['teacher']['size_bytes']:,} / {int4['size_bytes']:,} bytes)",
                    "met": ratio >= 5})
    first = first_names(models)
    one = {r["model"]: r for r in bench if r["threads"] == 1}
    s_row, t_row = (one.get(first[m["sha256"]]) if m else None for m in (fp32, by.get("teacher")))
    if s_row and t_row:
        ratio = s_row["tokens_per_s"] / t_row["tokens_per_s"]
        out.append({"target": "student tokens/s at 1 thread >= 4x teacher's (fp32 ONNX, KV cache)",
                    "measured": f"{ratio:.2f}x ({s_row['tokens_per_s']:.0f} vs {t_row['tokens_per_s']:.0f} tok/s)",
                    "met": ratio >= 4})
    return out


def slower_notes(models: list[dict], bench: list[dict]) -> list[str]:
    """Every quantized file that decodes slower than the fp32 student's file at 1 thread, with both speeds."""
    first = first_names(models)
    speed = {r["model"]: r["tokens_per_s"] for r in bench if r["threads"] == 1}
    fp32 = student(models)
    base = speed.get(first[fp32["sha256"]]) if fp32 else None
    out = []
    for m in models:
        mine = speed.get(m["name"]) if first[m["sha256"]] == m["name"] else None
        if base and mine and "mode" in m.get("info", {}) and mine < base:
            out.append(f"{_label(m)} decodes slower than the fp32 student ({fp32['name']}) at 1 thread: {mine:.0f} vs "
                       f"{base:.0f} tokens/s ({mine / base:.2f}x), in the same interleaved session.")
    return out


def sections(models: list[dict], bench: list[dict], samples: list[dict]) -> dict:
    """The LM keys of report.json beside the shared ones."""
    return {"bench": bench, "samples": samples, "targets": targets(models, bench), "notes": slower_notes(models, bench),
            "metrics": {"bits_per_byte": "mean next-byte cross-entropy in bits on the test split's documents "
                                         "(non-overlapping context windows), from the file itself (onnxruntime)",
                        "perplexity": "per byte, 2 ** bits_per_byte",
                        "agreement": "top-1 next-byte prediction equal to the teacher file's"}}


def _model_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    cols = ["model", "role", "params", "file size", "bits/byte", "perplexity", "agreement"]
    return cols, [[_label(m), m["role"], f"{m['params']:,}" if m.get("params") else "-", size_text(m.get("size_bytes")),
                   f"{m['bits_per_byte']:.4f}", f"{m['perplexity']:.3f}",
                   "-" if m.get("agreement") is None else f"{m['agreement']:.2%}"] for m in report["models"]]


def _bench_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    cols = ["model", "threads", "file size", "TTFT p50 (ms)", "TTFT p90", "decode tokens/s (p50)", "vs teacher"]
    teacher = {r["threads"]: r["tokens_per_s"] for r in report["bench"] if r["model"] == "teacher"}
    label = {m["name"]: _label(m) for m in report["models"]}
    return cols, [[label.get(r["model"], r["model"]), str(r["threads"]), size_text(r["size_bytes"]),
                   f"{r['ttft_ms']['p50']:.2f}", f"{r['ttft_ms']['p90']:.2f}", f"{r['tokens_per_s']:.0f}",
                   f"{r['tokens_per_s'] / teacher[r['threads']]:.2f}x" if r["threads"] in teacher else "-"]
                  for r in sorted(report["bench"], key=lambda r: (r["threads"], r["model"]))]


def markdown(report: dict) -> str:
    d = report["data"]
    lines = [*head_markdown(report, f"{report['name']} (language model)"),
             "Data: " + ", ".join(f"{k} {v['documents']} documents / {v['bytes']:,} bytes" for k, v in d.items()
                                  if k != "digest")
             + f" (corpus digest {d['digest']}); split by document, test never trained on. Every number below is "
               "measured on the model file itself (onnxruntime); files with the same sha256 are measured once.", "",
             "## Targets", "", md_table(["target", "measured", "met"],
                                         [[t["target"], t["measured"], "yes" if t["met"] else "**NO**"] for t in report["targets"]]),
             *(["", "## Notes", "", *[f"- {n}" for n in report.get("notes", [])]] if report.get("notes") else []),
             "", "## Held-out quality (test split)", "", md_table(*_model_rows(report)), "",
             *[f"- {k}: {v}" for k, v in report["metrics"].items()], ""]
    if report["bench"]:
        b = report["bench"][0]
        lines += ["## Generation benchmark (onnxruntime CPU, KV cache, greedy)", "",
                  f"Prompt {b['prompt_tokens']} bytes, {b['new_tokens']} decoded tokens; time to first token = prefill + "
                  "argmax; tokens/s = decoded tokens / p50 decode time. All files and thread counts timed interleaved "
                  "in one process after warm-up (`compress.bench.time_rounds`).", "", md_table(*_bench_rows(report)), "",
                  "![bits per byte vs decode speed](report.png)", ""]
    lines += [*stages_markdown(report), "## Generated samples (greedy, test-split prompts)", ""]
    for i, s in enumerate(report["samples"]):
        lines += [f"### Sample {i + 1}", "", "Prompt:", "", "```", s["prompt"], "```", ""]
        for name, text in s["continuations"].items():
            lines += [f"**{name}**:", "", "```", text, "```", ""]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Test bits/byte vs decode tokens/s at 1 thread of every distinct file (marker area = file size)."""
    from compress._plot import finish, role_scatter

    speed = {r["model"]: r["tokens_per_s"] for r in report["bench"] if r["threads"] == 1}
    points = [(speed[m["name"]], m["bits_per_byte"], m) for m in report["models"] if m["name"] in speed]
    fig, ax, _ = role_scatter(points)
    # xlim: room on the right for the labels of the fastest files
    finish(fig, ax, path, [(x, y, f"{_label(m)} ({size_text(m['size_bytes'])})", "black") for x, y, m in points],
           width=110, step=14, title=f"{report['name']}: quality vs speed (marker area = file size)",
           xlim=(min(speed.values()) / 1.25, max(speed.values()) * 2.2), ylabel="test bits per byte (lower is better)",
           xlabel="decode tokens/s, greedy with the KV cache, 1 thread (log scale; one interleaved session)")


def print_table(report: dict) -> None:
    rows = [[t["target"], t["measured"], "[green]yes[/green]" if t["met"] else "[red]NO[/red]"] for t in report["targets"]]
    print_tables(report, 160, rich_table(f"compress: {report['name']} (test split, from the files)", *_model_rows(report),
                                         left=("model", "role")),
                 rich_table("generation (onnxruntime, KV cache, interleaved)", *_bench_rows(report), left=("model",)),
                 rich_table("targets", ["target", "measured", "met"], rows, left=("target", "measured", "met")))
