"""report.json (stable schema, documented in docs/report.md), report.md, report.png and the terminal table."""

from __future__ import annotations

import datetime as dt
import math
import platform
from pathlib import Path

from compress._io import write_json, write_text
from compress.bench import cpu_info
from compress.preprocess import read_preprocessing
from compress.schema import REPORT_VERSION as SCHEMA_VERSION
from compress.schema import validate_report

__all__ = ["build", "classify", "write", "print_table", "print_tables", "markdown", "head_markdown", "stages_markdown",
           "plot", "digests", "versions", "stage_details", "md_table", "rich_table", "console", "size_text",
           "SCHEMA_VERSION", "MODEL_SUFFIXES"]

MODEL_SUFFIXES = (".onnx", ".ort", ".pte", ".tflite")


def versions() -> dict:
    import onnx
    import onnxruntime
    import torch
    import torch_pruning

    import compress

    return {"compress": compress.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "torch_pruning": torch_pruning.__version__}


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else a / b


def digests(folder: Path) -> dict[str, dict]:
    """``{path relative to folder: {sha256, size_bytes}}`` of every model file under ``folder``."""
    from compress.cache import sha256_file

    return {p.relative_to(folder).as_posix(): {"sha256": sha256_file(p), "size_bytes": p.stat().st_size}
            for p in sorted(Path(folder).rglob("*")) if p.suffix in MODEL_SUFFIXES and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def chance_level(test_class_counts: list[int]) -> dict:
    """Chance on the test split: the better of guessing uniformly (1/K) and always answering the majority
    class; a model whose accuracy is at most that plus 3 standard errors (binomial, at the chance level, over
    the test samples) is *at chance*: it has learned nothing measurable."""
    n, k = sum(test_class_counts), len(test_class_counts)
    level = max(1 / k, max(test_class_counts) / n)
    return {"level": level, "threshold": level + 3 * math.sqrt(level * (1 - level) / n), "test_samples": n,
            "rule": "accuracy <= max(1/K, majority-class share) + 3 standard errors"}


def build(recipe, data: dict, models: list[dict], stages: list[dict], run_dir: Path, metric: tuple[str, bool],
          **sections) -> dict:
    """The report of any task (schema: compress/schema.py): ``models`` carry ``path`` and ``sha256`` of their files
    under ``run_dir`` and their ``metric[0]`` value; ``sections`` are the task's own keys (runtimes, samples, ...)."""
    name, higher = metric
    models = [{**m, "file": Path(m["path"]).relative_to(run_dir).as_posix(),
               "metric": {"name": name, "value": m[name], "higher_is_better": higher}} for m in models]
    return {
        "schema_version": SCHEMA_VERSION,
        "task": recipe.task,
        "name": recipe.name,
        "recipe_file": str(Path(recipe.source_file).absolute()) if recipe.source_file else None,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "cpu": cpu_info(),
        "recipe": recipe.model_dump(mode="json", by_alias=True),
        "data": data,
        "models": models,
        "stages": stages,
        **sections,
    }


def classify(recipe, data: dict, models: list[dict], stages: list[dict], run_dir: Path, runtimes: dict | None = None) -> dict:
    """A classification run's report: accuracy, chance level, the comparisons and ``runtimes`` (the final model on
    every runtime, compress.evaluate.evaluate_runtimes)."""
    chance = chance_level(data["test_class_counts"])
    models = [{**m, "at_chance": m["accuracy"] <= chance["threshold"]} for m in models]
    rows = [{**r, "at_chance": r["accuracy"] <= chance["threshold"]} for r in (runtimes or {}).get("runtimes", [])]
    by_role = {m["role"]: m for m in models}
    teacher, final, scratch = by_role.get("teacher"), by_role.get("final"), by_role.get("scratch")
    summary: dict = {}
    if teacher and final:
        summary["final_vs_teacher"] = {
            "size_ratio": _ratio(teacher["size_bytes"], final["size_bytes"]),  # x times smaller
            "speedup_p50_batch1": _ratio(teacher["latency_ms"]["p50"], final["latency_ms"]["p50"]),
            "speedup_p50_batch": _ratio(teacher["latency_batch_ms"]["p50"], final["latency_batch_ms"]["p50"]),
            "accuracy_ratio": _ratio(final["accuracy"], teacher["accuracy"]),
            "broken": _broken(teacher=teacher, final=final),
        }
    if scratch and final:
        summary["final_vs_scratch"] = {"accuracy_delta": final["accuracy"] - scratch["accuracy"],
                                       "errors": final["errors"], "scratch_errors": scratch["errors"],
                                       "broken": _broken(scratch=scratch, final=final)}
    return build(recipe, data, models, stages, run_dir, ("accuracy", True),
                 preprocessing=read_preprocessing(run_dir),  # model.json's (compress/preprocess.py): what the app applies
                 bench={"batch1": {"batch": 1, "threads": 1},
                        "batch": {"batch": recipe.bench.batch, "threads": recipe.bench.threads or "all"},
                        "rounds": recipe.bench.rounds, "calls_per_round": recipe.bench.calls,
                        "protocol": "onnxruntime CPU, warm-up, interleaved rounds in shuffled order in one process, "
                                    "spinning off"},
                 chance=chance, summary=summary, **({**runtimes, "runtimes": rows} if runtimes else {}),
                 notes=_notes(models) + _runtime_notes(rows))


def _broken(**models: dict) -> list[str]:
    """The names (roles) among ``models`` that are at chance: a comparison with them says nothing."""
    return [role for role, m in models.items() if m.get("at_chance")]


def _notes(models: list[dict]) -> list[str]:
    """Plain statements about results a reader should not miss."""
    notes = []
    chance = [m["name"] for m in models if m.get("at_chance")]
    if chance:
        notes.append(f"AT CHANCE: {', '.join(chance)} scored no better than guessing on the test split (accuracy <= "
                     "max(1/K, majority share) + 3 standard errors). Nothing is compared against a model at chance; "
                     "check its training (learning rate, epochs) before reading its row.")
    recal = [(m["name"], m["info"]["bn_recalibrated"]) for m in models if m.get("info", {}).get("bn_recalibrated")]
    if recal:
        notes.append("BatchNorm statistics were stale and were re-estimated on training batches before selection, "
                     "export and measurement (compress/bn.py): " + "; ".join(f"{n} ({why})" for n, why in recal) + ".")
    stages = [m for m in models if m["role"] == "stage"]
    for src, m in zip(stages, stages[1:]):  # a quantized stage against the fp32 stage before it
        if not m["name"].endswith("quantize"):
            continue
        for key, label in (("latency_ms", "batch 1, 1 thread"), ("latency_batch_ms", "large batch, all threads")):
            q, f = m[key]["p50"], src[key]["p50"]
            if q > 1.05 * f:
                notes.append(f"{m['name']} ({m['info'].get('mode')}) is SLOWER than its fp32 source {src['name']} at {label}: "
                             f"p50 {q * 1000:.1f} us vs {f * 1000:.1f} us ({f / q:.2f}x). On this CPU the fp32 model is the faster choice there.")
            elif q > 0.95 * f:
                notes.append(f"{m['name']} ({m['info'].get('mode')}) is no faster than its fp32 source {src['name']} at {label} "
                             f"(p50 {q * 1000:.1f} us vs {f * 1000:.1f} us, {f / q:.2f}x): it is smaller, not quicker, on this CPU.")
    final, scratch = next((m for m in models if m["role"] == "final"), None), next((m for m in models if m["role"] == "scratch"), None)
    if final and scratch and final["errors"] > scratch["errors"] and not scratch.get("at_chance"):
        notes.append(f"The final model makes more test errors ({final['errors']}) than the scratch student ({scratch['errors']}): "
                     "on this data the compression chain cost more accuracy than distillation gained.")
    return notes


def _runtime_notes(rows: list[dict]) -> list[str]:
    """Every shipped file slower than its fp32 ONNX counterpart, or than its own source (an .ort than the .onnx it
    was converted from), named with both timings; 5 % of slack, as the quantized-model notes."""
    by_format = {r["format"]: r for r in rows if r["model"] == "final"}
    fp32 = next((r for r in rows if r["model"] == "fp32"), None) or by_format.get("onnx")
    notes = []
    for r in rows:
        if r["model"] != "final" or r["format"] == "onnx":  # model.onnx is the last stage's file: its note is above
            continue
        refs = [(fp32, "its fp32 .onnx counterpart")] if fp32 is not None else []
        if r["format"] == "ort" and "onnx" in by_format:
            refs.append((by_format["onnx"], "the .onnx it was converted from"))
        for ref, what in refs:
            for key, label in (("latency_ms", "batch 1, 1 thread"), ("latency_batch_ms", "large batch, all threads")):
                mine, theirs = r[key]["p50"], ref[key]["p50"]
                if mine > 1.05 * theirs:
                    notes.append(f"{Path(r['path']).name} ({r['runtime']}) is SLOWER than {what} {Path(ref['path']).name} "
                                 f"at {label}: p50 {mine * 1000:.1f} us vs {theirs * 1000:.1f} us ({theirs / mine:.2f}x).")
    return notes


# --- writing ---------------------------------------------------------------------------------------


def size_text(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def md_table(cols, rows, left=None) -> str:
    """A markdown table; given ``left`` (column names), every other column is right-aligned (``---:``: numbers)."""
    out = ["| " + " | ".join(map(str, cols)) + " |",
           "|" + "".join("---|" if left is None or c in left else "---:|" for c in cols)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


def rich_table(title: str, cols, rows, left=(), no_wrap=(), style=None):
    """The terminal's table of ``rows``: the ``left`` columns left-aligned, the others right-aligned (numbers);
    ``style(row)``, when given, styles a row (the search's frontier in green)."""
    from rich.table import Table

    table = Table(title=title)
    for c in cols:
        table.add_column(c, justify="left" if c in left else "right", no_wrap=c in no_wrap)
    for r in rows:
        table.add_row(*r, style=style(r) if style else None)
    return table


def console(width: int):
    """A rich console as wide as the terminal, or ``width`` columns when piped or logged (so that a wide table is not
    crushed into 80)."""
    import sys

    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else width)


def _us(timing: dict, *ps: str) -> str:
    """The ``ps`` percentiles of a timing (milliseconds) in microseconds, ``p50 / p90 / ...``."""
    return " / ".join(f"{timing[p] * 1000:.1f}" for p in ps)


def _speedup(teacher: dict | None, m: dict, key: str) -> str:
    """How many times faster than the teacher ``m`` is at p50 (``key``: latency_ms, latency_batch_ms), or "-"."""
    sp = _ratio(teacher[key]["p50"], m[key]["p50"]) if teacher else None
    return f"{sp:.2f}x" if sp else "-"


def _accuracy(m: dict) -> str:
    return f"{m['accuracy']:.2%}" + (" AT CHANCE" if m.get("at_chance") else "")


def _model_table(report: dict) -> tuple[list[str], list[list[str]]]:
    b = report["bench"]["batch"]
    cols = ["model", "role", "test acc", "errors", "agrees w/ teacher", "params", "MACs", "size", "smaller",
            "batch 1, 1 thread p50/p90/p99 (us)", "speed-up", f"batch {b['batch']}, {b['threads']} threads p50 (us)",
            "speed-up"]
    teacher = next((m for m in report["models"] if m["role"] == "teacher"), None)
    rows = []
    for m in report["models"]:
        smaller = _ratio(teacher["size_bytes"], m["size_bytes"]) if teacher else None
        rows.append([m["name"], m["role"], _accuracy(m), str(m["errors"]),
                     f"{m['agreement']:.2%}" if m.get("agreement") is not None else "-",
                     f"{m['params']:,}" if m.get("params") else "-", f"{m['macs'] / 1e6:.2f}M" if m.get("macs") else "-",
                     size_text(m["size_bytes"]), f"{smaller:.1f}x" if smaller else "-",
                     _us(m["latency_ms"], "p50", "p90", "p99"), _speedup(teacher, m, "latency_ms"),
                     _us(m["latency_batch_ms"], "p50"), _speedup(teacher, m, "latency_batch_ms")])
    return cols, rows


def head_markdown(report: dict, title: str) -> list[str]:
    """report.md's title and the run's date, versions, CPU (cores, SIMD features) and wall time (every task)."""
    v, cpu = report["versions"], report["cpu"]
    return [f"# compress report: {title}", "", f"{report['created']} · compress {v['compress']} · torch {v['torch']} · "
            f"onnxruntime {v['onnxruntime']} · CPU {cpu['model']} ({cpu['cores']} cores; {', '.join(cpu['features']) or 'no AVX2'})"
            f" · {report['run_seconds']:.0f} s", ""]


def markdown(report: dict) -> str:
    d = report["data"]
    lines = [*head_markdown(report, report["name"]),
             f"Data: {d['train']} train / {d['val']} val / {d['test']} test samples; every accuracy below is on the "
             "**test** split, which no stage trained, selected or calibrated on, measured by onnxruntime on the model file itself.",
             "Speed-ups are ratios to the teacher timed interleaved in one process after warm-up.", "",
             md_table(*_model_table(report))]
    s = report["summary"]
    if "final_vs_teacher" in s:
        f = s["final_vs_teacher"]
        lines += ["", "## Final model vs teacher", "", _broken_warning(f) +
                  f"- {f['size_ratio']:.1f}x smaller file, {f['speedup_p50_batch1']:.2f}x faster at batch 1 on 1 thread (p50), "
                  f"{f['speedup_p50_batch']:.2f}x at batch {report['bench']['batch']['batch']}; {f['accuracy_ratio']:.2%} of the teacher's accuracy."]
    if "final_vs_scratch" in s:
        f = s["final_vs_scratch"]
        lines.append(_broken_warning(f) + f"- Final model: {f['errors']} test errors; student trained from scratch with the "
                     f"same budget: {f['scratch_errors']}.")
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    lines += [*runtime_markdown(report), "", "![accuracy vs latency](report.png)", "", *stages_markdown(report)]
    return "\n".join(lines) + "\n"


# Stage info keys report.md does not list: in the heading (seconds, cached), in the Notes (bn_recalibrated), or a path
# of the run's own (ort_path); params/MACs before and after also head the prune layer table.
_NOT_FACTS = ("seconds", "cached", "bn_recalibrated", "ort_path")


def stages_markdown(report: dict) -> list[str]:
    """report.md's "## Stages" (every task): per stage its heading (the assistant it ran on, seconds, cached), its
    config, the prune layer table, every scalar value of its file's info but the _NOT_FACTS, and stage_details."""
    info = {m["name"]: m.get("info", {}) for m in report["models"]}
    lines = ["## Stages", ""]
    for st in report["stages"]:
        i = {} if st.get("model") else info.get(f"{st['index']:02d}_{st['type']}", {})  # an assistant's: no file of its own
        lines += [f"### {st['index']}. {st['type']}" + (f" ({st['model']})" if st.get("model") else "")
                  + f" ({st['seconds']} s{', cached' if st.get('cached') else ''})", "",
                  "`" + ", ".join(f"{k}={v}" for k, v in st["config"].items() if k != "type") + "`", ""]
        if "layers" in i:
            rows = [[r["layer"], r["before"], r["after"], f"{r['cut']:.0%}",
                     ("-" if r.get("asked") is None else format(r["asked"], ".0%"))
                     + (" **deeper than asked**" if r.get("deeper_than_asked") else "")] for r in i["layers"]]
            lines += [f"params {i['params_before']:,} -> {i['params_after']:,}; MACs {i['macs_before']:,} -> {i['macs_after']:,}",
                      "", *md_table(["layer", "channels before", "after", "removed", "asked"], rows).splitlines(), ""]
        skip = _NOT_FACTS + (("params_before", "params_after", "macs_before", "macs_after") if "layers" in i else ())
        lines += [f"- {k}: {v}" for k, v in i.items() if k not in skip and not isinstance(v, (dict, list))]
        lines += [*stage_details(i), ""]
    return lines


def _broken_warning(comparison: dict) -> str:
    """A line that comes before a comparison with a model at chance (so the comparison is never read bare)."""
    broken = comparison.get("broken") or []
    return (f"- **Not a meaningful comparison: the {' and the '.join(broken)} model scored at chance** "
            "(see Notes).\n" if broken else "")


def stage_details(info: dict) -> list[str]:
    """A stage's own findings, in its own words: ``info["notes"]`` (sentences) and ``info["tables"]``
    (``{"title", "columns", "rows"}``), so a stage can explain itself without report.py knowing it."""
    lines = [f"- {n}" for n in info.get("notes", [])]
    for t in info.get("tables", []):
        lines += ["", f"**{t['title']}**", "", *md_table(t["columns"], t["rows"]).splitlines()]
    return lines


def _runtime_table(report: dict) -> tuple[list[str], list[list[str]]]:
    b, rows = report["bench"]["batch"], report.get("runtimes") or []
    cols = ["file", "runtime", "test acc", "size", "static batch", "batch 1, 1 thread p50 / p90 (us)", "speed-up",
            f"batch {b['batch']}, {b['threads']} threads p50 / p90 (us)", "speed-up"]
    teacher = next((r for r in rows if r["model"] == "teacher"), None)
    return cols, [[r["name"], r["runtime"], _accuracy(r), size_text(r["size_bytes"]), str(r["static_batch"] or "any"),
                   _us(r["latency_ms"], "p50", "p90"), _speedup(teacher, r, "latency_ms"),
                   _us(r["latency_batch_ms"], "p50", "p90"), _speedup(teacher, r, "latency_batch_ms")] for r in rows]


def runtime_markdown(report: dict) -> list[str]:
    """The final model on every runtime beside the teacher (onnxruntime), and ORT Mobile's usability verdict."""
    if not report.get("runtimes"):
        return []
    lines = ["", "## Runtimes", "",
             "The final model in every exported format, timed in the same interleaved rounds as the teacher "
             "(onnxruntime). A static-batch file (ExecuTorch, LiteRT) runs the large batch as several calls of its batch.", "",
             md_table(*_runtime_table(report))]
    mu = report.get("mobile_usability")
    if mu:
        lines += ["", "ORT Mobile usability (onnxruntime's `check_onnx_model_mobile_usability`, on model.onnx): "
                  + "; ".join(f"{ep}: {v['verdict']}" + (f" ({v['verdict_if_fixed_shapes']} with fixed input shapes)"
                                                          if "verdict_if_fixed_shapes" in v else "")
                              + f", {v['supported_nodes']}/{v['nodes']} nodes in {v['partitions']} partition(s)"
                              + (f", unsupported: {', '.join(v['unsupported_ops'])}" if v["unsupported_ops"] else "")
                              for ep, v in mu.items() if isinstance(v, dict))
                  + (". Worth trying NNAPI/CoreML against the CPU EP." if mu.get("try_eps") else ". Use the CPU EP.")]
    return lines


def plot(report: dict, path: Path) -> None:
    """Test accuracy vs p50 latency at batch 1 of every model, and of the final model on the other runtimes."""
    from compress._plot import ROLE_COLORS, finish, role_scatter

    points = [(m["latency_ms"]["p50"] * 1000, m["accuracy"] * 100, m) for m in report["models"]]
    fig, ax, area = role_scatter(points)
    # The final model on the other runtimes (report["runtimes"]; its ONNX file and the teacher are plotted above).
    markers = {"ort-mobile": "P", "executorch": "D", "litert": "^"}
    for r in [r for r in report.get("runtimes") or [] if r["model"] != "teacher" and r["runtime"] in markers]:
        x, y = r["latency_ms"]["p50"] * 1000, r["accuracy"] * 100
        hollow = {"marker": markers[r["runtime"]], "facecolors": "none", "edgecolors": ROLE_COLORS["final"]}
        ax.scatter([x], [y], s=area(r["size_bytes"]), linewidths=1.5, zorder=3, **hollow)
        ax.scatter([], [], label=f"final on {r['runtime']}", **hollow)  # its legend entry, at the legend's marker size
        points.append((x, y, {"name": f"final, {r['runtime']}", "size_bytes": r["size_bytes"]}))
    finish(fig, ax, path, [(x, y, f"{m['name']} ({size_text(m['size_bytes'])})", "black") for x, y, m in points],
           width=90, step=22, legend="lower right", xlabel="latency p50, batch 1, 1 thread (us, log scale)",
           ylabel="test accuracy (%)", title=f"{report['name']}: accuracy vs latency (marker area = file size)")


def write(report: dict, out_dir: Path, to_markdown, to_plot) -> None:
    """report.json (validated: what is written is what compress check will accept), and the task's report.md and png."""
    validate_report(report, str(out_dir / "report.json"))
    write_json(out_dir / "report.json", report)
    write_text(out_dir / "report.md", to_markdown(report))
    to_plot(report, out_dir / "report.png")


def print_tables(report: dict, width: int, *tables) -> None:
    """A run's end in the terminal (every task): ``tables``, the report's notes and where report.md is (console)."""
    out = console(width)
    for table in tables:
        out.print(table)
    for n in report.get("notes", []):
        out.print(f"[yellow]note:[/yellow] {n}")
    out.print(f"report: {report['files']['report_md']}")


def print_table(report: dict) -> None:
    tables = [rich_table(f"compress: {report['name']} (test split, onnxruntime CPU)", *_model_table(report),
                         left=("model", "role"))]
    if report.get("runtimes"):
        tables.append(rich_table("final model on every runtime (teacher: onnxruntime), interleaved",
                                 *_runtime_table(report), left=("file", "runtime")))
    print_tables(report, 200, *tables)
