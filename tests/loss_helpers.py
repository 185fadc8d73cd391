"""Small helpers of the hand-computed loss tests (float64 tensors, unit vectors, log-sum-exp)."""

import math

import torch

E = math.e


def t64(rows):
    return torch.tensor(rows, dtype=torch.float64)


def unit(x):
    return x / x.norm()


def lse(values):
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))
