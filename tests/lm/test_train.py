"""compress/lm/train.py: KD loss and bits per byte against hand-computed values; a few training steps."""

import math

import numpy as np
import torch

from compress.lm.data import eval_windows
from compress.lm.model import GPT, GPTConfig
from compress.lm.train import bits_per_byte, evaluate_lm, teacher_continuations, token_kd_loss, torch_logits, train_lm
from compress.stages.base import LMTrainConfig


def test_kd_loss_matches_hand_computation():
    s = torch.tensor([[[1.0, 0.0, 0.0]]])  # one position, vocab 3
    t = torch.tensor([[[0.0, 1.0, 0.0]]])
    y = torch.tensor([[0]])
    T, alpha = 2.0, 0.25
    # CE: -log softmax(s)[0] = -log(e / (e + 2))
    ce = -math.log(math.e / (math.e + 2))
    ps = np.exp([0.5, 0, 0]) / np.exp([0.5, 0, 0]).sum()
    pt = np.exp([0, 0.5, 0]) / np.exp([0, 0.5, 0]).sum()
    kl = float((pt * np.log(pt / ps)).sum())
    want = alpha * ce + (1 - alpha) * T * T * kl
    got = token_kd_loss(s, t, y, T, alpha)
    assert abs(float(got) - want) < 1e-6
    assert abs(float(token_kd_loss(s, None, y, T, alpha)) - ce) < 1e-6  # no teacher: CE
    assert abs(float(token_kd_loss(s, s, y, T, 0.0))) < 1e-7  # teacher == student: KL 0


def test_kd_loss_mask_averages_only_masked_positions():
    s = torch.randn(1, 4, 5)
    y = torch.tensor([[1, 2, 3, 4]])
    mask = torch.tensor([[False, False, True, True]])
    want = torch.nn.functional.cross_entropy(s[0, 2:], y[0, 2:])
    assert torch.allclose(token_kd_loss(s, None, y, 1.0, 1.0, mask), want)


def test_bits_per_byte_hand_worked():
    # uniform over 256 bytes: exactly 8 bits per byte, perplexity 256
    windows = np.zeros((2, 5), np.int64)
    score = evaluate_lm(lambda x: np.zeros((*x.shape, 256), np.float32), windows)
    assert abs(score.bits_per_byte - 8.0) < 1e-6 and abs(score.perplexity - 256) < 1e-3 and score.tokens == 8
    # probability 1/2 on the right byte at every position: 1 bit per byte
    logits = np.full((1, 2, 256), -1e9, np.float32)
    logits[0, :, 7] = logits[0, :, 9] = 0.0
    s2 = evaluate_lm(lambda x: logits, np.array([[0, 7, 9]]))
    assert abs(s2.bits_per_byte - 1.0) < 1e-6
    assert abs(bits_per_byte(4 * math.log(2), 2) - 2.0) < 1e-12


def test_agreement_counts_top1_matches():
    logits = np.zeros((1, 4, 256), np.float32)
    logits[0, :, 3] = 1
    teacher_top1 = np.array([[3, 3, 5, 5]])
    s = evaluate_lm(lambda x: logits, np.zeros((1, 5), np.int64), teacher_top1)
    assert s.agreement == 0.5


def _stream():
    return np.frombuffer(b"abcabcabd " * 300, np.uint8).copy()


def test_training_lowers_bits_per_byte_and_distillation_runs():
    torch.manual_seed(0)
    cfg = GPTConfig(width=32, layers=1, heads=2, context=16)
    stream = _stream()
    w = eval_windows(stream, 16, 512)
    model = GPT(cfg)
    before = evaluate_lm(torch_logits(model), w).bits_per_byte
    train_lm(model, stream, LMTrainConfig(steps=40, lr=3e-3, batch_size=8), seed=0, warmup=5)
    after = evaluate_lm(torch_logits(model), w).bits_per_byte
    assert after < before - 1.0
    student = GPT(cfg)
    info = train_lm(student, stream, LMTrainConfig(steps=5, lr=3e-3, batch_size=8), seed=0, warmup=2,
                    teacher=model, temperature=2, alpha=0.5)
    assert info["steps"] == 5 and info["tokens"] == 5 * 8 * 16


def test_sequence_level_data_and_training():
    torch.manual_seed(0)
    teacher = GPT(GPTConfig(width=32, layers=1, heads=2, context=16))
    seq = teacher_continuations(teacher, _stream(), 10, 4, 0.0, seed=0, batch=4)
    assert seq.shape == (10, 17) and seq.dtype == np.uint8
    again = teacher_continuations(teacher, _stream(), 10, 4, 0.0, seed=0, batch=4)
    assert (seq == again).all()
    # the continuation is the teacher's greedy choice after each prefix
    x = torch.from_numpy(seq[:1, :8].astype(np.int64))
    with torch.no_grad():
        assert int(teacher(x)[0][0, -1].argmax()) == int(seq[0, 8])
    student = GPT(GPTConfig(width=32, layers=1, heads=2, context=16))
    info = train_lm(student, _stream(), LMTrainConfig(steps=3, lr=1e-3, batch_size=4), 0, warmup=1, sequences=seq, prompt_len=4, level="both")
    assert info["level"] == "both"
