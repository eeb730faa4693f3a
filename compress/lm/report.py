"""The LM report: report.json, report.md (tables, targets, generated samples), report.png and a rich table in the terminal."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from compress._io import write_json, write_text
from compress.bench import cpu_info
from compress.report import versions

__all__ = ["build", "write", "print_table", "targets"]


def targets(models: list[dict], bench: list[dict]) -> list[dict]:
    """The issue's three targets, measured: distilled < scratch bits per byte; INT4 >= 5x smaller than the
    teacher's fp32 ONNX; student tokens/s at 1 thread >= 4x the teacher's."""
    by = {m["name"]: m for m in models}
    out = []
    if "student" in by and "scratch" in by:
        s, c = by["student"]["bits_per_byte"], by["scratch"]["bits_per_byte"]
        out.append({"target": "distilled student: lower test bits/byte than scratch (same steps)",
                    "measured": f"{s:.4f} vs {c:.4f} ({s - c:+.4f})", "met": s < c})
    int4 = next((m for m in models if m["name"].startswith("student-int4")), None)
    if int4 and "teacher.onnx" in by:
        ratio = by["teacher.onnx"]["size_bytes"] / int4["size_bytes"]
        out.append({"target": f"INT4 student file >= 5x smaller than teacher fp32 ONNX ({int4['name']})",
                    "measured": f"{ratio:.1f}x ({by['teacher.onnx']['size_bytes']:,} / {int4['size_bytes']:,} bytes)",
                    "met": ratio >= 5})
    one = {r["model"]: r for r in bench if r["threads"] == 1}
    if "teacher" in one and "student" in one:
        ratio = one["student"]["tokens_per_s"] / one["teacher"]["tokens_per_s"]
        out.append({"target": "student tokens/s at 1 thread >= 4x teacher's (fp32 ONNX, KV cache)",
                    "measured": f"{ratio:.2f}x ({one['student']['tokens_per_s']:.0f} vs {one['teacher']['tokens_per_s']:.0f} tok/s)",
                    "met": ratio >= 4})
    return out


def build(recipe, data: dict, models: list[dict], stages: list[dict], bench: list[dict], samples: list[dict],
          seconds: float) -> dict:
    return {
        "schema_version": 1, "task": "lm", "name": recipe.name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(), "cpu": cpu_info(), "recipe": recipe.model_dump(mode="json"),
        "data": data, "models": models, "stages": stages, "bench": bench, "samples": samples,
        "targets": targets(models, bench), "seconds": round(seconds, 1),
        "metrics": {"bits_per_byte": "mean next-byte cross-entropy in bits on the test split's documents "
                                     "(non-overlapping context windows)",
                    "perplexity": "per byte, 2 ** bits_per_byte",
                    "agreement": "top-1 next-byte prediction equal to the teacher's (torch teacher)"},
    }


def _size(n) -> str:
    return "-" if n is None else (f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB")


def _model_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    cols = ["model", "format", "params", "file size", "bits/byte", "perplexity", "agreement"]
    rows = [[m["name"], m["format"], f"{m['params']:,}" if m.get("params") else "-", _size(m.get("size_bytes")),
             f"{m['bits_per_byte']:.4f}", f"{m['perplexity']:.3f}",
             "-" if m.get("agreement") is None else f"{m['agreement']:.2%}"] for m in report["models"]]
    return cols, rows


def _bench_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    cols = ["model", "threads", "file size", "TTFT p50 (ms)", "TTFT p90", "decode tokens/s (p50)", "vs teacher"]
    teacher = {r["threads"]: r for r in report["bench"] if r["model"] == "teacher"}
    rows = []
    for r in sorted(report["bench"], key=lambda r: (r["threads"], r["model"])):
        t = teacher.get(r["threads"])
        rows.append([r["model"], str(r["threads"]), _size(r["size_bytes"]), f"{r['ttft_ms']['p50']:.2f}",
                     f"{r['ttft_ms']['p90']:.2f}", f"{r['tokens_per_s']:.0f}",
                     f"{r['tokens_per_s'] / t['tokens_per_s']:.2f}x" if t else "-"])
    return cols, rows


def _md_table(cols, rows) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


def _markdown(report: dict) -> str:
    d = report["data"]
    lines = [f"# compress LM report: {report['name']}", "",
             f"Created {report['created']} in {report['seconds']:.0f} s on {report['cpu']['model']} "
             f"({report['cpu']['cores']} cores). Data: " + ", ".join(f"{k} {v['documents']} documents / {v['bytes']:,} bytes"
                                                                     for k, v in d.items() if k != "digest")
             + f" (corpus digest {d['digest']}); split by document, test never trained on.", "",
             "## Targets", "", _md_table(["target", "measured", "met"],
                                          [[t["target"], t["measured"], "yes" if t["met"] else "**NO**"] for t in report["targets"]]),
             "", "## Held-out quality (test split)", "", _md_table(*_model_rows(report)), "",
             *[f"- {k}: {v}" for k, v in report["metrics"].items()], ""]
    if report["bench"]:
        b = report["bench"][0]
        lines += ["## Generation benchmark (onnxruntime CPU, KV cache, greedy)", "",
                  f"Prompt {b['prompt_tokens']} bytes, {b['new_tokens']} decoded tokens; time to first token = prefill + "
                  "argmax; tokens/s = decoded tokens / p50 decode time. All files and thread counts timed interleaved "
                  "in one process after warm-up (`compress.bench.time_rounds`).", "", _md_table(*_bench_rows(report)), ""]
        if "report_png" in report.get("files", {}):
            lines += ["![bits per byte vs decode speed](report.png)", ""]
    lines += ["## Stages", ""]
    for st in report["stages"]:
        info = {k: v for k, v in st["info"].items() if k not in ("tables", "notes")}
        lines.append(f"- **{st['stage']}** ({st['model']}): " + ", ".join(f"{k} {v}" for k, v in info.items()))
        for n in st["info"].get("notes", []):
            lines.append(f"  - {n}")
        for t in st["info"].get("tables", []):
            lines += ["", f"  {t['title']}", "", "  " + _md_table(t["columns"], t["rows"]).replace("\n", "\n  "), ""]
    lines += ["", "## Generated samples (greedy, test-split prompts)", ""]
    for i, s in enumerate(report["samples"]):
        lines += [f"### Sample {i + 1}", "", "Prompt:", "", "```", s["prompt"], "```", ""]
        for name, text in s["continuations"].items():
            lines += [f"**{name}**:", "", "```", text, "```", ""]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> bool:
    """Test bits/byte vs decode tokens/s at 1 thread of every ONNX file (marker area = file size); False when
    nothing was timed (no export stage)."""
    from compress._plot import figure, label_points, plain_log_ticks, save

    speed = {r["model"]: r["tokens_per_s"] for r in report["bench"] if r["threads"] == 1}
    files = [m for m in report["models"] if m["format"] == "onnx" and m["name"].removesuffix(".onnx") in speed]
    if not files:
        return False
    fig, ax = figure()
    biggest = max(m["size_bytes"] for m in files)
    labels = []
    for m in files:
        x, y = speed[m["name"].removesuffix(".onnx")], m["bits_per_byte"]
        teacher = m["name"] == "teacher.onnx"
        ax.scatter([x], [y], s=40 + 1500 * m["size_bytes"] / biggest, c="#d62728" if teacher else "#2ca02c",
                   alpha=0.6, edgecolors="black", linewidths=0.5, zorder=3)
        labels.append((x, y, f"{m['name'].removesuffix('.onnx')} ({_size(m['size_bytes'])})", "black"))
    # Torch models that have no file of their own (scratch, assistants) as lines: their quality, not their speed.
    for m in report["models"]:
        if m["role"] in ("scratch", "assistant"):
            ax.axhline(m["bits_per_byte"], color="#7f7f7f", lw=0.8, ls="--", zorder=1)
            ax.annotate(f"{m['name']} (torch)", (0.01, m["bits_per_byte"]), xycoords=("axes fraction", "data"),
                        fontsize=7, color="#7f7f7f", va="bottom")
    ax.set_xscale("log")
    xs = [x for x, _, _, _ in labels]
    ax.set_xlim(min(xs) / 1.25, max(xs) * 2.2)  # room on the right for the labels of the fastest files
    label_points(ax, fig, labels, width=110, step=14, offset=9, fontsize=8)
    plain_log_ticks(ax)
    ax.set_xlabel("decode tokens/s, greedy with the KV cache, 1 thread (log scale; one interleaved session)")
    ax.set_ylabel("test bits per byte (lower is better)")
    ax.set_title(f"{report['name']}: quality vs speed (marker area = file size)")
    ax.grid(True, which="both", alpha=0.3)
    save(fig, path)
    return True


def write(report: dict, out: Path, final: Path | None = None) -> None:
    """Write the report files into ``out``; ``final``: the folder they will be published to (for the paths listed)."""
    final = final or out
    report["files"] = {"report_json": str(final / "report.json"), "report_md": str(final / "report.md")}
    if plot(report, out / "report.png"):
        report["files"]["report_png"] = str(final / "report.png")
    write_json(out / "report.json", report)
    write_text(out / "report.md", _markdown(report))


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    import sys

    console = Console(width=None if sys.stdout.isatty() else 160)  # piped or logged: don't wrap at 80 columns
    for title, (cols, rows) in ((f"compress LM: {report['name']} (test split)", _model_rows(report)),
                                ("generation (onnxruntime, KV cache, interleaved)", _bench_rows(report))):
        if not rows:
            continue
        table = Table(title=title)
        for c in cols:
            table.add_column(c, justify="left" if c in ("model", "format") else "right")
        for r in rows:
            table.add_row(*r)
        console.print(table)
    t = Table(title="targets")
    for c in ("target", "measured", "met"):
        t.add_column(c)
    for row in report["targets"]:
        t.add_row(row["target"], row["measured"], "[green]yes[/green]" if row["met"] else "[red]NO[/red]")
    console.print(t)
    console.print(f"report: {report['files']['report_md']}")
