"""One smoke test per registered stage, generated from the registry: a new stage is picked up automatically."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compress.artifact import Artifact
from compress.stages import STAGES
from compress.stages.export import ExportConfig, export

# Values for fields that have no default (or one of which must be given, as prune's ratio or target),
# by field name. A new stage with another required field fails below with a message saying to add it here.
REQUIRED_VALUES = {"ratio": 0.5}
# Keep training stages short.
SMALL = {"epochs": 1}


def config_for(spec):
    data = {"type": spec.name}
    for name, field in spec.config.model_fields.items():
        if name == "type":
            continue
        key = field.alias or name
        if name in SMALL:
            data[key] = SMALL[name]
        elif field.is_required() or name in REQUIRED_VALUES:
            assert name in REQUIRED_VALUES, (f"stage {spec.name!r} has a required field {name!r}; "
                                             f"add a test value to REQUIRED_VALUES in {__file__}")
            data[key] = REQUIRED_VALUES[name]
    return spec.config.model_validate(data)


def test_registry_is_consistent():
    assert {"train", "distill", "prune", "finetune", "export", "quantize"} <= set(STAGES)
    for name, spec in STAGES.items():
        assert spec.name == name
        assert spec.config.model_fields["type"].annotation.__args__ == (name,)
        assert spec.accepts and spec.accepts <= {"torch", "onnx"} and spec.produces in {"torch", "onnx"}
        # a stage that trains has the fields the scratch baseline budget is built from
        if spec.trains:
            assert {"epochs", "lr", "batch_size", "weight_decay"} <= set(spec.config.model_fields)


def test_registering_a_duplicate_name_raises():
    from compress.stages.base import register_stage
    from compress.stages.train import TrainStageConfig

    with pytest.raises(ValueError, match="registered twice"):
        register_stage(TrainStageConfig, accepts={"torch"}, produces="torch")(lambda a, c, x: a)
    assert STAGES["train"].fn.__module__ == "compress.stages.train"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_smoke(name, trained_cnn, as_artifact, make_ctx, splits, tmp_path):
    spec = STAGES[name]
    cfg = config_for(spec)
    ctx = make_ctx()
    source = as_artifact(trained_cnn)
    if "torch" in spec.accepts:
        art = source
    else:
        assert "onnx" in spec.accepts
        art = export(source, ExportConfig(type="export"), ctx)
        ctx.stage_index = 1
    out = spec.fn(art, cfg, ctx)

    assert isinstance(out, Artifact)
    assert out.format == spec.produces
    assert out.name == name and out.lineage == art.lineage + (art.name,)
    assert isinstance(out.info, dict)
    x = torch.from_numpy(splits.val.x[:5])
    if out.format == "torch":
        assert isinstance(out.model, torch.nn.Module) and out.model is not trained_cnn
        with torch.no_grad():
            assert out.model.eval()(x).shape == (5, 10)
    else:
        import onnxruntime as ort

        assert out.path is not None and Path(out.path).is_file()
        assert Path(out.path).parent == tmp_path / "stages"
        sess = ort.InferenceSession(str(out.path), providers=["CPUExecutionProvider"])
        assert sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0].shape == (5, 10)
    if spec.trains:
        # one epoch was asked for
        assert out.info.get("best_epoch") == 1


def test_stages_own_their_checks_and_tasks():
    assert all(spec.tasks == ("classify",) for spec in STAGES.values())
    assert STAGES["prune"].check is not None and STAGES["distill"].check is STAGES["finetune"].check
    assert STAGES["export"].check is None and STAGES["train"].student_epochs is None


def test_a_stage_check_runs_in_prepare_and_names_its_key(monkeypatch, tmp_path):
    import dataclasses

    import yaml

    from compress.errors import RecipeError
    from compress.pipeline import validate
    from compress.recipe import load_recipe
    from compress.stages.base import register_stage
    from conftest import MINIMAL_RECIPE

    seen = []

    def check(cfg, ctx):
        seen.append((cfg.type, ctx.index, ctx.splits.num_classes, isinstance(ctx.student, torch.nn.Module)))
        raise ctx.error("no export today", "format")

    monkeypatch.setitem(STAGES, "export", dataclasses.replace(STAGES["export"], check=check))
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL_RECIPE, "stages": [{"type": "export", "format": ["onnx"]}]},
                                   sort_keys=False))
    with pytest.raises(RecipeError) as err:
        validate(load_recipe(path), output=tmp_path / "out")
    assert seen == [("export", 0, 10, True)]
    line = path.read_text().splitlines().index("  format:") + 1
    assert str(err.value) == f"{path}:{line}: stages[0].format: no export today"

    # register_stage stores tasks, check and student_epochs on the spec, in the registry of each task it names
    from compress.stages.base import REGISTRY, stages_for
    from compress.stages.train import TrainStageConfig

    monkeypatch.setitem(REGISTRY, "classify", {k: v for k, v in STAGES.items() if k != "train"})
    monkeypatch.setitem(REGISTRY, "lm", dict(REGISTRY["lm"]))
    register_stage(TrainStageConfig, accepts={"torch"}, produces="torch", trains=True, tasks=("classify", "lm"),
                   check=check, student_epochs=lambda cfg: 7)(lambda a, c, x: a)
    spec = stages_for("lm")["train"]
    assert (spec.tasks, spec.check, spec.student_epochs(None)) == (("classify", "lm"), check, 7)
    assert stages_for("classify")["train"] == spec
    with pytest.raises(ValueError, match="registered twice for task 'lm'"):
        register_stage(TrainStageConfig, accepts={"torch"}, produces="torch", tasks=("lm",))(lambda a, c, x: a)


def test_the_scratch_budget_counts_each_stage_s_student_epochs(monkeypatch):
    import dataclasses

    from compress.pipeline import scratch_budget
    from compress.recipe import parse_recipe
    from conftest import MINIMAL_RECIPE

    r = parse_recipe({**MINIMAL_RECIPE, "stages": [{"type": "train", "epochs": 3, "lr": 0.01},
                                                   {"type": "distill", "epochs": 2, "generations": 2},
                                                   {"type": "export"}]})
    assert scratch_budget(r) == {"epochs": 3 + 4, "lr": 0.01, "batch_size": 64, "weight_decay": 0.0}
    monkeypatch.setitem(STAGES, "train", dataclasses.replace(STAGES["train"], student_epochs=lambda cfg: 10 * cfg.epochs))
    assert scratch_budget(r)["epochs"] == 30 + 4


def test_the_pipeline_asks_stages_instead_of_probing_them():
    source = (Path(__file__).resolve().parents[2] / "compress" / "pipeline.py").read_text()
    for probe in ("st.type ==", "getattr(st", "hasattr(st"):
        assert probe not in source, f"compress/pipeline.py probes stage configs ({probe!r}): use a StageSpec hook"
