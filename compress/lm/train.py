"""Language-model training: cross-entropy, token-level KD and sequence-level KD, on a step budget; evaluation.

* token-level KD (Hinton et al. 2015, applied at every position): alpha * CE(next byte) +
  (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over positions.
* sequence-level KD (Kim & Rush 2016): the teacher continues training prompts (greedy or sampled) and
  the student is trained with CE on those continuations; the generated set is cached on disk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from compress import distributed
from compress.errors import StageError
from compress.lm.data import random_windows
from compress.lm.model import GPT, generate, next_token
from compress.losses.hinton import hinton_kd_loss
from compress.stages.base import LMTrainConfig

__all__ = ["token_kd_loss", "bits_per_byte", "train_lm", "teacher_continuations", "evaluate_lm", "LMScore"]

def token_kd_loss(student: torch.Tensor, teacher: torch.Tensor | None, targets: torch.Tensor, temperature: float,
                  alpha: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Hinton KD (compress.losses.hinton_kd_loss) at every position: alpha * CE + (1 - alpha) * T^2 * KL, the mean
    over positions. Without a teacher, CE; with ``mask`` (sequence-level KD, whose targets are the teacher's own
    continuations), CE over the masked positions only.

    ``student``/``teacher``: (..., vocab) logits; ``targets``: (...) token ids.
    """
    v = student.shape[-1]
    s, y = student.reshape(-1, v), targets.reshape(-1)
    if mask is not None:
        m = mask.reshape(-1).to(s.dtype)
        return (F.cross_entropy(s, y, reduction="none") * m).sum() / m.sum().clamp_min(1)
    return F.cross_entropy(s, y) if teacher is None else hinton_kd_loss(s, teacher.reshape(-1, v), y, temperature, alpha)


def bits_per_byte(nll_nats_sum: float, tokens: int) -> float:
    """Byte-level tokens: bits per byte = mean negative log-likelihood (nats) / ln 2."""
    return nll_nats_sum / tokens / math.log(2.0)


WARMUP = 20  # steps of linear learning-rate warm-up


def _schedule(step: int, b: LMTrainConfig, warmup: int) -> float:
    if step < warmup:
        return b.lr * (step + 1) / warmup
    frac = (step - warmup) / max(1, b.steps - warmup)
    return b.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))  # cosine down to lr / 10


def train_lm(model: GPT, train: np.ndarray, budget: LMTrainConfig, seed: int, *, teacher: GPT | None = None,
             temperature: float = 2.0, alpha: float = 0.5, sequences: np.ndarray | None = None,
             prompt_len: int = 0, level: str = "token", progress: Callable[[int, float], None] | None = None,
             what: str = "training", warmup: int = WARMUP) -> dict:
    """Train ``model`` in place for ``budget.steps`` steps of ``budget.batch_size`` windows of its context.

    ``level``: ``token`` (real windows; with a teacher, token KD, else CE), ``sequence`` (CE on the teacher's
    continuations ``sequences``, positions after ``prompt_len``), ``both`` (half of each batch each way).
    Every step sees ``batch_size`` windows whatever the level, so budgets compare.

    Under torchrun every rank draws the same global batch from the same generator, takes its rows of each part
    (``distributed.shard``) and weights each part's mean loss by its rows / ``batch_size``: the ranks' losses sum
    to the one-process loss, so the summed gradients are the full-batch gradient and every rank takes the same
    clipped step. In one process the numbers are those of the single-process loop.
    """
    ctx = model.cfg.context
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=budget.lr, weight_decay=budget.weight_decay, betas=(0.9, 0.95))
    if teacher is not None:
        teacher.eval()
    n_seq = {"token": 0, "sequence": budget.batch_size, "both": budget.batch_size // 2}[level]
    n_real = budget.batch_size - n_seq
    losses = []
    world = distributed.world_size()
    model.train()
    for step in range(budget.steps):
        for g in opt.param_groups:
            g["lr"] = _schedule(step, budget, warmup)
        loss = 0.0
        if n_real:
            x = random_windows(train, n_real, ctx + 1, gen)[distributed.shard(n_real)]
            if len(x):
                logits, _ = model(x[:, :-1])
                with torch.no_grad():
                    t_logits = None if teacher is None else teacher(x[:, :-1])[0]
                loss = loss + token_kd_loss(logits, t_logits, x[:, 1:], temperature, alpha) * len(x) / budget.batch_size
        if n_seq:
            idx = torch.randint(0, len(sequences), (n_seq,), generator=gen).numpy()[distributed.shard(n_seq)]
            if len(idx):
                x = torch.from_numpy(sequences[idx].astype(np.int64))
                logits, _ = model(x[:, :-1])
                mask = torch.zeros(x.shape[1] - 1, dtype=torch.bool)
                mask[prompt_len - 1:] = True  # predict the continuation, not the prompt
                seq_loss = token_kd_loss(logits, None, x[:, 1:], temperature, 1.0, mask.expand(len(x), -1))
                loss = loss + seq_loss * len(x) / budget.batch_size
        # the full batch's loss; every rank must take the same decision, or the others wait in the next all-reduce
        total = distributed.all_reduce_(torch.as_tensor(loss).detach().clone(), mean=False) if world > 1 else loss
        if not torch.isfinite(total):
            raise StageError(f"{what}: the loss became {total.item()} at step {step}; lower lr (now {budget.lr})")
        opt.zero_grad(set_to_none=True)
        if torch.is_tensor(loss):  # else this rank's share of the batch is empty: its gradients count as zeros
            loss.backward()
        distributed.sum_grads_(model.parameters())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(total.item())
        if progress:
            progress(step, losses[-1])
    distributed.sync_module(model)  # the ranks' steps are identical; this makes sure of it
    model.eval()
    tail = losses[-max(1, len(losses) // 10):]
    return {"steps": budget.steps, "batch_size": budget.batch_size, "tokens": budget.steps * budget.batch_size * ctx,
            "lr": budget.lr, "final_loss": float(np.mean(tail)), "level": level,
            **({"processes": world} if world > 1 else {})}


def teacher_continuations(teacher: GPT, train: np.ndarray, count: int, prompt_len: int, temperature: float,
                          seed: int, batch: int = 64) -> np.ndarray:
    """(count, context + 1) uint8: training-split prompts of ``prompt_len`` bytes + the teacher's continuation.

    Under torchrun a collective: rank 0 generates and broadcasts the result, since generation draws from one
    generator batch after batch and splitting it would change the sequences.
    """
    if distributed.rank() != 0:
        return distributed.agree(None)
    new = teacher.cfg.context + 1 - prompt_len
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, count, batch):
        n = min(batch, count - i)
        prompts = random_windows(train, n, prompt_len, gen)
        cont = generate(teacher, prompts, new - 1, temperature=temperature, gen=gen) if new > 1 else prompts[:, :0]
        # One more token so the window is context + 1 long: generate's last step already has its logits.
        seq = torch.cat([prompts, cont], 1)
        with torch.no_grad():
            last = teacher(seq[:, -teacher.cfg.context:])[0][:, -1]
        out.append(torch.cat([seq, next_token(last, temperature, gen)], 1).numpy().astype(np.uint8))
    return distributed.agree(np.concatenate(out))


@dataclass
class LMScore:
    bits_per_byte: float
    perplexity: float  # per byte: 2 ** bits_per_byte
    tokens: int
    agreement: float | None  # top-1 next-byte agreement with the teacher
    top1: np.ndarray  # (windows, positions) argmax predictions

    def as_dict(self) -> dict:
        return {"bits_per_byte": self.bits_per_byte, "perplexity": self.perplexity, "tokens": self.tokens,
                "agreement": self.agreement}


def evaluate_lm(logits_fn: Callable[[np.ndarray], np.ndarray], windows: np.ndarray, teacher_top1: np.ndarray | None = None,
                batch: int = 16) -> LMScore:
    """Score next-byte prediction on ``windows`` (n, ctx + 1): ``logits_fn(x: int64 (b, ctx)) -> (b, ctx, vocab)``."""
    nll, top1 = 0.0, []
    for i in range(0, len(windows), batch):
        w = windows[i:i + batch]
        logits = torch.from_numpy(np.asarray(logits_fn(w[:, :-1]), dtype=np.float32))
        nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(w[:, 1:]).reshape(-1),
                                     reduction="sum"))
        top1.append(logits.argmax(-1).numpy())
    top1 = np.concatenate(top1)
    tokens = int(windows[:, 1:].size)
    bpb = bits_per_byte(nll, tokens)
    agree = None if teacher_top1 is None else float((top1 == teacher_top1).mean())
    return LMScore(bpb, float(2 ** bpb), tokens, agree, top1)


def torch_logits(model: GPT) -> Callable[[np.ndarray], np.ndarray]:
    def fn(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x))[0].numpy()
    return fn
