"""Near misses: something besides the output needs the T x T matrix.

The probabilities returned or fed to a regulariser, the scores returned, dropout on the
probabilities in training.

Each model is followed by its labels, `CASES.append(_nm(...))` (tests/corpus/__init__.py says what
they mean); the reference hooks return the forgetting attention a careless rewrite would produce
("differs") or, where the model is that operator, the operator itself ("equal").
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import Case
from .common import _causal, _module_qkvg_builder, _nm, _qkvg, _qkvg_builder, ref_fox_logsig

CASES: list[Case] = []


# The probabilities are returned.
def fox_returning_probs(q, k, v, g):
    lam = F.logsigmoid(g).cumsum(-1)
    T = q.shape[-2]
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + (lam[..., :, None] - lam[..., None, :])
    s = s.masked_fill(~_causal(T, q.device), float("-inf"))
    p = s.softmax(-1)
    return p @ v, p


CASES.append(_nm(
    "nm_probs_returned", _qkvg_builder(fox_returning_probs, 2, 2, 13, 8),
    "output=probs", "the T x T probabilities leave the site", ref_fox_logsig, relation="equal"))


# The probabilities feed an entropy regulariser.
class EntropyRegularisedForget(nn.Module):
    def forward(self, q, k, v, g):
        lam = torch.cumsum(F.logsigmoid(g), dim=-1)
        T = q.shape[-2]
        s = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        s = s + lam[..., :, None] - lam[..., None, :]
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
        p = F.softmax(s, dim=-1)
        entropy = -(p * p.clamp_min(1e-9).log()).sum(-1).mean()
        return torch.matmul(p, v), entropy


CASES.append(_nm(
    "nm_probs_entropy_regulariser", _module_qkvg_builder(EntropyRegularisedForget, 2, 2, 11, 8),
    "output=entropy(p)", "probabilities used elsewhere", ref_fox_logsig, relation="equal"))


# The pre-softmax scores are returned (for distillation).
def fox_returning_logits(q, k, v, g):
    lam = F.logsigmoid(g).cumsum(-1)
    T = q.shape[-2]
    s = torch.einsum("bhqd,bhkd->bhqk", q, k) * q.shape[-1] ** -0.5
    s = s + lam[..., :, None] - lam[..., None, :]
    s = torch.where(_causal(T, q.device), s, float("-inf"))
    return torch.einsum("bhqk,bhkd->bhqd", s.softmax(-1), v), s


CASES.append(_nm(
    "nm_logits_returned", _qkvg_builder(fox_returning_logits, 1, 2, 15, 12),
    "output=scores", "the T x T scores leave the site", ref_fox_logsig, relation="equal"))


# Dropout on the probabilities in training.
class TrainingDropoutForget(nn.Module):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.2)

    def forward(self, q, k, v, g):
        lam = F.logsigmoid(g).cumsum(-1)
        T = q.shape[-2]
        s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + lam[..., :, None] - lam[..., None, :]
        s = s.masked_fill(~_causal(T, q.device), float("-inf"))
        return self.drop(s.softmax(-1)) @ v


def build_train_dropout(dtype):
    return TrainingDropoutForget().train(), _qkvg(2, 2, 13, 8, dtype)


CASES.append(_nm(
    "nm_dropout_training", build_train_dropout,
    "dropout=nn.Dropout(train,p=0.2)", "random dropout mask inside the site", None, relation=None,
    training=True))
