"""``distill``: train the student on the teacher's soft targets (Hinton KD) plus the hard labels.

``loss: [...]`` replaces the default with any sum of registered losses (``compress/losses/``), e.g.
``[{kind: hinton}, {kind: hint, weight: 0.5, pairs: [{teacher: features.5, student: features.5}]}]``.

``augment: {shift: 4, noise: 0.1}`` trains on randomly shifted (zero fill) and noised inputs, with the
teacher's logits computed on each augmented batch rather than read from the per-sample cache: the
teacher labels what the student actually sees, which a shifted signal's hard label may no longer
describe. The scratch baseline is trained with the same augmentation (compress/pipeline.py).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from compress.artifact import Artifact
from compress.errors import CompressError, ModelError, StageError
from compress.losses import hinton_kd_loss
from compress.losses.combine import Objective, build_terms, loss_union
from compress.losses.mutual import Peers, mutual_loss
from compress.models import build_model, check_io, describe_spec
from compress.models.spec import ModelSpec
from compress.teachers import TeacherSource, ensemble_logits
from compress.stages.base import CheckContext, register_stage
from compress.stages.train import Schedule

__all__ = ["DistillConfig", "KDOptions", "ChainModel", "AugmentConfig", "augmenter", "distill", "kd_train", "kd_loss_fn",
           "online_kd_loss_fn", "LossList", "loss_fit_kwargs", "check_kd"]

LossList = list[loss_union()]  # type: ignore[misc]


class ChainModel(ModelSpec):
    """One step of a progressive / teacher-assistant chain (Mirzadeh et al. 2020): a built-in or factory
    model, usually between the teacher and the student in size, trained from scratch by KD from the step
    before it."""

    _needs: ClassVar[str] = "a chain step needs"

    def describe(self) -> str:
        return describe_spec(self)

    def build(self, input_shape, num_classes: int):
        model = build_model(self, tuple(input_shape), num_classes)
        check_io(model, tuple(input_shape), num_classes, f"chain step {self.describe()}")
        return model


class AugmentConfig(BaseModel):
    """Random training augmentation (train split only; val and test are never augmented)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    shift: int = Field(0, ge=0, le=4096, description="shift each input by up to this many samples (C x L signals) "
                                                     "or pixels along each axis (C x H x W images), zero fill")
    noise: float = Field(0.0, ge=0, le=100, allow_inf_nan=False,
                         description="standard deviation of gaussian noise added to each input (input units)")


def _shift(x, k, dim: int):
    """``x`` with sample b moved by ``k[b]`` positions along ``dim``; positions moved in from outside are 0."""
    n = x.shape[dim]
    pos = torch.arange(n)[None, :] - k[:, None]  # source position of each output position, per sample
    shape = [x.shape[0]] + [1] * (x.dim() - 1)
    shape[dim] = n
    valid = ((pos >= 0) & (pos < n)).to(x.dtype).reshape(shape)
    return torch.gather(x, dim, pos.clamp(0, n - 1).reshape(shape).expand_as(x)) * valid


def augmenter(cfg: AugmentConfig | None, input_shape):
    """``fit``'s ``augment`` callable for ``cfg`` (None when it does nothing). Shifts need a spatial axis:
    signals C x L or images C x H x W; flat N x F features (and byte text) can only take noise."""
    if cfg is None or (cfg.shift == 0 and cfg.noise == 0):
        return None
    if cfg.shift and len(input_shape) not in (2, 3):
        raise StageError(f"augment.shift moves signals (C x L) or images (C x H x W) along their axes; this data's "
                         f"input is {tuple(input_shape)}: use augment.noise only, or no augment")

    def augment(x, gen):
        if cfg.shift:
            for dim in range(2, x.dim()):
                x = _shift(x, torch.randint(-cfg.shift, cfg.shift + 1, (x.shape[0],), generator=gen), dim)
        if cfg.noise:
            x = x + cfg.noise * torch.randn(x.shape, generator=gen)
        return x

    return augment


class KDOptions(Schedule):
    """The distillation keys shared by ``distill`` and ``finetune`` (issue: every method in both stages)."""

    temperature: float = Field(4.0, gt=0, le=100, description="softens both distributions; 1 = plain softmax")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the hard-label loss; 1 - alpha goes to the soft loss")
    generations: int = Field(1, ge=1, le=20, description="born-again: generation g + 1 is taught by generation g "
                                                        "(the first by the teacher); the last one is kept")
    peers: int = Field(1, ge=1, le=8, description="online/mutual learning: train this many peers that teach each "
                                                  "other (no teacher); peer 0 (the incoming model) is kept")
    loss: LossList | None = Field(None, description="sum of losses by kind; default: Hinton with this stage's "
                                                    "temperature and alpha")
    teachers: list[TeacherSource] | None = Field(None, description="ensemble / black-box teachers for this stage: "
                                                 "the weighted mean of their logits replaces the recipe teacher's")
    chain: list[ChainModel] = Field(default_factory=list, validation_alias=AliasChoices("chain", "assistants"),
                                    description="progressive / teacher-assistant chain, largest first: the teacher "
                                                "teaches chain[0], each step the next, the last the student "
                                                "('assistants' is accepted too)")
    augment: AugmentConfig | None = Field(None, description="random shifts and noise on the training inputs; the "
                                                            "teacher's logits are computed on each augmented batch")

    @model_validator(mode="after")
    def _one_scheme(self):
        if self.peers > 1 and (self.loss is not None or self.generations > 1 or self.chain or self.teachers):
            raise ValueError("'peers' (mutual learning, no teacher) cannot be combined with 'loss', 'generations', "
                             "'chain' or 'teachers'")
        if self.teachers is not None and not self.teachers:
            raise ValueError("'teachers' needs at least one entry (or leave it out for the recipe's teacher)")
        if self.augment is not None and self.loss is not None:
            raise ValueError("'augment' runs the teacher on every augmented batch, and a 'loss' list reads teacher "
                             "outputs cached per sample: use the default Hinton loss (temperature, alpha) with augment")
        if self.augment is not None and self.teachers and not (len(self.teachers) == 1 and self.teachers[0].is_recipe):
            raise ValueError("'augment' needs a teacher to run on each augmented batch; an ensemble or black box "
                             "'teachers' list gives outputs per training sample only")
        return self

    def student_epochs(self) -> int:
        """Epochs of training spent on student-sized models (born-again generations and mutual peers each
        train one): the scratch baseline gets the same, so that it is compared at equal compute."""
        return self.epochs * self.generations * self.peers

    def augmentation(self) -> dict | None:
        return None if self.augment is None else self.augment.model_dump()


class DistillConfig(KDOptions):
    type: Literal["distill"]
    epochs: int = Field(60, ge=1, le=10_000, description="a distilled student needs a longer schedule than a "
                                                         "scratch one to pull ahead (measured on MNIST-1D: KD made "
                                                         "22 % more test errors than scratch at 30 epochs, fewer "
                                                         "from 60 on; benchmarks/distill_budget.py)")
    lr: float = Field(3e-3, gt=0, le=10, description="Adam; 3e-3 beat 1e-3 for small students on digits (measured); "
                                                     "1e-2 is better still for the built-in BatchNorm cnn students "
                                                     "(MNIST-1D, digits), not for the transformer")
    init_from_teacher: bool | None = Field(None, description="start from the teacher's weights where shapes allow; "
                                                                 "default: yes for a student.from_teacher student "
                                                                 "entering the chain")


def loss_fit_kwargs(ctx, model, cfg) -> dict:
    """``fit`` keyword arguments for a stage's loss: the Hinton default, or the ``loss`` list's Objective."""
    if cfg.loss is None:  # (augment, which needs the Hinton default, rules out a loss list)
        return _hinton_fit_kwargs(ctx, cfg)
    terms = build_terms(cfg.loss, ctx.teacher, model, ctx.splits.input_shape,
                        {"temperature": cfg.temperature, "alpha": cfg.alpha},
                        at=("stages", ctx.stage_index, "loss"), recipe=ctx.recipe)
    obj = Objective(cfg.loss, terms, ctx)
    return {"loss_fn": obj, "extra_params": obj.extra_params(), "attach": obj.attach}


def _hinton_fit_kwargs(ctx, cfg: KDOptions) -> dict:
    """Hinton KD at the stage's temperature and alpha: from cached teacher logits, or with ``augment`` from the
    teacher run on each augmented batch."""
    augment = augmenter(cfg.augment, ctx.splits.input_shape)
    if augment is not None:
        return {"loss_fn": online_kd_loss_fn(ctx.teacher, cfg.temperature, cfg.alpha), "augment": augment}
    return {"loss_fn": kd_loss_fn(ctx, cfg.temperature, cfg.alpha)}


def kd_loss_fn(ctx, temperature: float, alpha: float):
    """Loss over a batch given by sample indices; teacher logits come from the context's cache."""
    teacher = ctx.teacher_logits("train")

    def loss(logits, targets, idx):
        return hinton_kd_loss(logits, teacher[idx], targets, temperature, alpha)

    return loss


def online_kd_loss_fn(teacher, temperature: float, alpha: float):
    """Hinton KD with the teacher run on each training batch as the student sees it (augmented), not cached."""
    teacher.eval()

    def loss(logits, targets, _idx, inputs):
        with torch.no_grad():
            soft = teacher(inputs)
        return hinton_kd_loss(logits, soft, targets, temperature, alpha)

    loss.takes_inputs = True
    return loss


def check_kd(cfg: KDOptions, ctx: CheckContext) -> None:
    """Before any compute: every ``teachers`` member loads and gives one score per class, every ``chain`` step
    builds, and the ``loss`` list's layer names exist and project (one forward pass each, no training)."""
    shape, classes = ctx.splits.input_shape, ctx.splits.num_classes
    if cfg.teachers and not (len(cfg.teachers) == 1 and cfg.teachers[0].is_recipe):
        _check_teachers(cfg, ctx)
    for j, spec in enumerate(cfg.chain):
        try:
            spec.build(shape, classes)
        except ModelError as exc:
            raise ctx.error(str(exc), "chain", j) from None
    if not cfg.loss:
        return
    first = ctx.teacher  # the student's teachers: the recipe's (or the last assistant), itself for born-again
    for spec in cfg.chain:
        torch.manual_seed(ctx.recipe.seed)
        first = spec.build(shape, classes).eval()
    for t in [first] + ([ctx.student] if cfg.generations > 1 else []):
        build_terms(cfg.loss, t, ctx.student, shape, {"temperature": cfg.temperature, "alpha": cfg.alpha},
                    at=("stages", ctx.index, "loss"), recipe=ctx.recipe)


def _check_teachers(cfg: KDOptions, ctx: CheckContext) -> None:
    """A ``teachers`` list: every member gives one score per class; no layers asked of an ensemble."""
    from pathlib import Path

    from compress.context import Context
    from compress.teachers import member_logits

    splits = ctx.splits
    run_ctx = Context(recipe=ctx.recipe, splits=splits, teacher=ctx.teacher, out_dir=Path("."), quiet=True)
    for j, src in enumerate(cfg.teachers):
        try:
            out = member_logits(src, run_ctx, None if src.logits else np.zeros((2, *splits.input_shape), np.float32))
        except CompressError as exc:
            raise ctx.error(str(exc), "teachers", j) from None
        except Exception as exc:  # onnxruntime and factories raise their own types
            raise ctx.error(f"{src.describe()}: {type(exc).__name__}: {str(exc).splitlines()[0]}", "teachers", j) from None
        if out.ndim != 2 or out.shape[1] != splits.num_classes:
            raise ctx.error(f"{src.describe()} gives outputs of shape {tuple(out.shape)}; expected "
                            f"{splits.num_classes} class scores per sample", "teachers", j)
    for j, entry in enumerate(cfg.loss or []):
        if getattr(entry, "pairs", None) or getattr(entry, "teacher", None):
            kinds = ", ".join(s.describe() for s in cfg.teachers)
            raise ctx.error(f"loss '{entry.kind}' reads teacher layers, but this stage's teachers ({kinds}) give "
                            "only outputs (a black box or an ensemble has no layers to read); use hinton, kl, "
                            "mse, or rkd without layer names", "loss", j)


@register_stage(DistillConfig, accepts={"torch"}, produces="torch", trains=True, check=check_kd,
                student_epochs=DistillConfig.student_epochs)
def distill(art: Artifact, cfg: DistillConfig, ctx) -> Artifact:
    art, init_info = _maybe_init_from_teacher(art, cfg, ctx)
    out = kd_train(art, cfg, ctx, "distill")
    return dataclasses.replace(out, info={**out.info, **init_info})


def kd_train(art: Artifact, cfg: KDOptions, ctx, name: str) -> Artifact:
    """Train ``art.model`` by the stage's distillation scheme: mutual peers, or a (chain of) teacher(s)
    (the recipe's, an ensemble or a black box) teaching one or more born-again generations."""
    if cfg.peers > 1:
        return _mutual(art, cfg, ctx, name)
    teacher_ctx, chain, generations = _ensemble_ctx(cfg, ctx), [], []
    for j, spec in enumerate(cfg.chain):  # each chain step by Hinton KD from the one before
        torch.manual_seed(ctx.recipe.seed + ctx.stage_index + 500 + j)
        model = spec.build(ctx.splits.input_shape, ctx.splits.num_classes)
        res, teacher_ctx = _taught(model, cfg, ctx, 500 + j, f"chain step {j + 1}/{len(cfg.chain)}",
                                   _hinton_fit_kwargs(teacher_ctx, cfg))
        chain.append({"model": spec.describe(), "best_epoch": res.best_epoch,
                      "val_accuracy": res.best_val_accuracy, "seconds": res.seconds})
    for g in range(cfg.generations):
        # Born-again: every generation starts from the same student initialisation and learns from the one before.
        res, teacher_ctx = _taught(art.model, cfg, ctx, 1000 * g,
                                   name if cfg.generations == 1 else f"{name} gen {g + 1}/{cfg.generations}",
                                   loss_fit_kwargs(teacher_ctx, art.model, cfg))
        generations.append({"generation": g + 1, **res.info})
    info = {k: v for k, v in generations[-1].items() if k != "generation"}
    if cfg.generations > 1:
        info["generations"] = generations
    if chain:
        info["chain"] = chain
    return art.derive(name, model=res.model, info=info)


def _taught(model, cfg: KDOptions, ctx, seed_offset: int, desc: str, fit_kwargs: dict):
    """``fit`` of ``model`` on the stage's schedule, and the context whose teacher is the trained model (never
    the recipe teacher's cached outputs)."""
    res = cfg.fit(model, ctx, desc, seed_offset, **fit_kwargs)
    return res, dataclasses.replace(ctx, teacher=res.model, _teacher_logits={}, _teacher_features={}, teacher_key=None)


def _mutual(art: Artifact, cfg: KDOptions, ctx, name: str) -> Artifact:
    """Deep mutual learning: the student and ``peers - 1`` fresh copies train together on one loop."""
    seed = ctx.recipe.seed + ctx.stage_index
    peers = Peers(art.model, cfg.peers, seed)
    trained = [peers]  # fit trains a copy of the wrapper: attach points the loss at the copy's logits

    def loss(_logits, targets, _idx):
        return mutual_loss(trained[0].last, targets, cfg.temperature, cfg.alpha)

    def attach(model):
        trained[0] = model
        return lambda: None

    res = cfg.fit(peers, ctx, f"mutual x{cfg.peers}", loss_fn=loss, attach=attach,
                  augment=augmenter(cfg.augment, ctx.splits.input_shape))
    from compress.training import evaluate_split

    peer_val = [evaluate_split(p, ctx.splits.val.x, ctx.splits.val.y)[0] for p in res.model.peers]
    return art.derive(name, model=res.model.peers[0].eval(),
                      info={**res.info, "peers": cfg.peers, "peer_val_accuracy": peer_val})


def _maybe_init_from_teacher(art: Artifact, cfg: DistillConfig, ctx) -> tuple[Artifact, dict]:
    from_teacher = getattr(ctx.recipe.student, "from_teacher", None) is not None
    wanted = cfg.init_from_teacher if cfg.init_from_teacher is not None else (from_teacher and not art.lineage)
    if not wanted:
        return art, {}
    import copy

    from compress.models.derive import init_from_teacher

    model = copy.deepcopy(art.model)
    done = init_from_teacher(model, ctx.teacher)
    return dataclasses.replace(art, model=model), {"init_from_teacher": {"copied": len(done["copied"]),
                                                                         "kept": done["kept"]}}


def _ensemble_ctx(cfg: KDOptions, ctx):
    """The context whose teacher logits are the ``teachers`` ensemble's (unchanged without ``teachers``)."""
    if not cfg.teachers or (len(cfg.teachers) == 1 and cfg.teachers[0].is_recipe):
        return ctx
    return dataclasses.replace(ctx, _teacher_logits={"train": ensemble_logits(cfg.teachers, ctx)},
                               _teacher_features={}, teacher_key=None)
