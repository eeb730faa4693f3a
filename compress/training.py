"""The one training loop behind teacher training, ``train``, ``distill`` and ``finetune``.

Adam with a cosine schedule; the weights with the best validation accuracy are kept (model selection
on val, never on test). Validation always sees fresh BatchNorm statistics: when they are stale
(compress/bn.py), a recalibrated copy is scored and kept. A non-finite loss stops the stage with a hint
and the last good weights.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compress import bn, distributed
from compress.data import Splits
from compress.errors import StageError

__all__ = ["fit", "FitResult", "accuracy", "evaluate_split", "cached_model"]

# loss_fn(student_logits, targets, sample_indices) -> scalar; indices let KD look up cached teacher logits.
# A loss_fn with ``takes_inputs = True`` also gets the batch's (augmented) inputs: KD on augmented data runs
# the teacher on exactly what the student saw.
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# augment(inputs, generator) -> inputs of the same shape (random training augmentation, seeded by fit)
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


DIVERGENCE = 100.0  # an epoch's mean loss this many times the first batch's means training has diverged


def _diverged(what: str, model: nn.Module, best_state: dict, best_epoch: int, lr: float) -> StageError:
    kept = f"epoch {best_epoch}" if best_epoch else "the initial weights"
    err = StageError(f"{what}; training stopped with the best weights so far ({kept}). "
                     f"Hint: lower the learning rate (now {lr}).")
    model.load_state_dict(best_state)
    err.model = model.eval()  # the last good weights, for the caller to save
    return err


@dataclass(frozen=True)
class FitResult:
    model: nn.Module
    best_epoch: int
    best_val_accuracy: float
    history: list[dict]
    seconds: float
    bn_recalibrated: str | None = None  # why BatchNorm statistics were re-estimated before validation, if they were

    @property
    def info(self) -> dict:
        """What a stage reports of its training: best epoch, its val accuracy, seconds (and any BN recalibration)."""
        recal = {"bn_recalibrated": self.bn_recalibrated} if self.bn_recalibrated else {}
        return {"best_epoch": self.best_epoch, "val_accuracy": self.best_val_accuracy, "seconds": self.seconds, **recal}


@torch.no_grad()
def evaluate_split(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) on one split."""
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(x), batch_size):
        logits = model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size])))
        target = torch.from_numpy(y[i:i + batch_size])
        correct += int((logits.argmax(1) == target).sum())
        loss += float(F.cross_entropy(logits, target, reduction="sum"))
    return correct / len(y), loss / len(y)


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return evaluate_split(model, x, y)[0]


def fit(model: nn.Module, splits: Splits, *, epochs: int, lr: float, batch_size: int, seed: int,
        loss_fn: LossFn, desc: str, weight_decay: float = 0.0, quiet: bool = False,
        extra_params: Iterable[nn.Parameter] = (),
        attach: Callable[[nn.Module], Callable[[], None]] | None = None,
        augment: Augment | None = None) -> FitResult:
    """Train a copy of ``model`` and return it with the best-validation weights restored.

    ``extra_params`` (e.g. KD feature projectors) are optimised with the model but not returned;
    ``attach(copy)`` is called on the copy being trained (to add forward hooks) and returns a detach callback.
    ``augment`` transforms each training batch (never val); it draws from its own generator, so the batch
    order is the same with and without it.
    """
    from compress._progress import progress_bar

    model = copy.deepcopy(model)
    detach = attach(model) if attach is not None else (lambda: None)
    gen = torch.Generator().manual_seed(seed)
    aug_gen = torch.Generator().manual_seed(seed + 1) if augment is not None else None
    torch.manual_seed(seed)
    train_x = splits.train.x  # an ndarray, or Rows of a memory-mapped file: batches are gathered on demand
    y = torch.from_numpy(splits.train.y)
    extra = list(extra_params)
    opt = torch.optim.Adam([*model.parameters(), *extra], lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(y) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    best_key, best_epoch, best_state = (-1.0, 0.0), 0, copy.deepcopy(model.state_dict())
    history: list[dict] = []
    recalibrated = None
    start = time.perf_counter()
    # Under torchrun every rank takes its slice of each global batch; DDP averages the gradients, so a
    # step sees the same `batch_size` samples as in one process (BatchNorm statistics are per rank).
    rank, world = distributed.rank(), distributed.world_size()
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    with progress_bar(desc, epochs, quiet or rank != 0) as advance:
        for epoch in range(1, epochs + 1):
            model.train()
            order = torch.randperm(len(y), generator=gen)
            total, seen = 0.0, 0
            for b in range(steps_per_epoch):
                idx = order[b * batch_size:(b + 1) * batch_size]
                if len(idx) < 2 * world and b > 0:  # BatchNorm cannot train on a batch of one (per rank)
                    continue
                idx = idx[rank::world]
                xb = torch.from_numpy(np.ascontiguousarray(train_x[idx.numpy()]))
                if augment is not None:
                    xb = augment(xb, aug_gen)
                inputs = (xb,) if getattr(loss_fn, "takes_inputs", False) else ()
                loss = loss_fn(net(xb), y[idx], idx, *inputs)
                # every rank must take the same decision, or the others wait forever in the next all-reduce
                check = distributed.all_reduce_(loss.detach().clone()) if world > 1 else loss
                if epoch == 1 and b == 0:
                    first_loss = float(check.detach())
                if not torch.isfinite(check):
                    raise _diverged(f"{desc}: loss became {loss.item()} at epoch {epoch}, batch {b + 1}",
                                    model, best_state, best_epoch, lr)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                for p in extra:  # parameters outside the DDP module (KD projectors) are averaged by hand
                    if p.grad is not None:
                        distributed.all_reduce_(p.grad)
                opt.step()
                sched.step()
                total += loss.item() * len(idx)
                seen += len(idx)
            epoch_loss = float(distributed.all_reduce_(torch.tensor(total / max(seen, 1))))
            if epoch_loss > DIVERGENCE * first_loss:
                raise _diverged(f"{desc}: training diverged at epoch {epoch} (mean loss {epoch_loss:.4g}, more than "
                                f"{DIVERGENCE:g}x the first batch's {first_loss:.4g})",
                                model, best_state, best_epoch, lr)
            # Selected on fresh BatchNorm statistics: a stale model is scored (and kept) recalibrated, and training
            # goes on from its own statistics.
            why = bn.staleness(model, train_x, seed + epoch)
            snapshot = bn.recalibrate_(model, train_x, seed + epoch) if why else None
            recalibrated = why or recalibrated
            val_acc, val_loss = evaluate_split(model, splits.val.x, splits.val.y)
            history.append({"epoch": epoch, "train_loss": epoch_loss, "val_accuracy": val_acc, "val_loss": val_loss})
            # Small val sets saturate: among equal accuracies prefer the lower val loss, not the earliest epoch.
            if (val_acc, -val_loss) > best_key:
                best_key, best_epoch, best_state = (val_acc, -val_loss), epoch, copy.deepcopy(model.state_dict())
            if snapshot is not None:
                bn.restore(model, snapshot)
            advance(f"loss {total / max(seen, 1):.4f}  val {val_acc:.2%}")
    model.load_state_dict(best_state)
    distributed.sync_module(model)  # ranks may pick different best epochs (per-rank BN stats): rank 0 wins
    model.eval()
    detach()
    return FitResult(model, best_epoch, best_key[0], history, time.perf_counter() - start, recalibrated)


def cached_model(cache, kind: str, key: str, template: nn.Module, make: Callable[[], tuple[nn.Module, dict]], *,
                 desc: str, quiet: bool) -> tuple[nn.Module, dict]:
    """``make() -> (model, info)`` (a training, run on every rank under torchrun), or the verified cache entry
    ``kind/key`` loaded into a copy of ``template``. Only the writing rank stores the result (with ``info``); the
    claim on the key makes a second process that wants the same model wait for it and reuse it."""
    import contextlib

    from compress._progress import say

    def entry_info() -> dict:
        entry = cache.get(kind, key)
        info = entry.meta.get("info") if entry is not None else None
        return info if isinstance(info, dict) else {}

    writer = distributed.is_writer()
    cached = cache.get_weights(kind, key, template) if writer else None
    if distributed.agree(cached is not None) and cached is None:  # rank 0 found it: the other ranks load it too
        cached = cache.get_weights(kind, key, template)  # a read-only cache there: a damaged entry raises
    if cached is not None:
        say(f"[dim]{desc}: reusing cached weights {key}[/dim]", quiet)
        return cached.eval(), {"cached": True, **entry_info()}
    with cache.claim(kind, key) if writer else contextlib.nullcontext():
        again = cache.get_weights(kind, key, template) if distributed.world_size() == 1 else None
        if again is not None:  # another process trained it while this one waited for the claim
            say(f"[dim]{desc}: reusing cached weights {key} (trained by another process)[/dim]", quiet)
            return again.eval(), {"cached": True, **entry_info()}
        model, info = make()
        if writer:
            cache.put_weights(kind, key, model, meta={"info": {k: v for k, v in info.items() if k != "seconds"}})
    return model.eval(), {"cached": False, **info}
