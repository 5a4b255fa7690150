"""AdamP (Heo et al. 2021, "AdamP: Slowing down the slowdown for momentum optimizers on
scale-invariant weights", ICLR), the optimiser of paper section 3.2.1, computed on whole
parameter lists.

The ``adamp`` package by the optimiser's authors updates one parameter at a time: about
twenty small tensor operations for each of CropNet's ~300 parameters, which on a 2-core CPU
costs more than the forward pass at the demo's image size. This class computes the same
update (Algorithm 2 of the AdamP paper, the package's defaults and its ``nesterov=False``
path) with ``torch._foreach_*`` operations over every parameter at once, and the projection's
channel and layer cosine similarities from one dot product and two norms per weight.
``tests/test_optim.py`` checks it against the package, step by step.

For a parameter ``p`` with gradient ``g`` (Adam moments ``m``, ``v``, step ``t``)::

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
    u = m / (sqrt(v) / sqrt(1 - b2^t) + eps)                      # Adam's direction
    if p has >= 2 dims and |cos(g, p)| < delta / sqrt(d) for every channel (d: the channel's
    size), or else for the whole weight (d: its size), p counts as scale-invariant:
        u -= p_hat <p_hat, u>   (p_hat: p / (|p| + eps), per channel or for the whole weight)
        weight decay is scaled by wd_ratio
    p = p (1 - lr wd) - lr / (1 - b1^t) u
"""
from __future__ import annotations

import math

import torch
from torch.optim import Optimizer


class AdamP(Optimizer):
    """AdamP over parameter lists; same arguments and defaults as ``adamp.AdamP`` (no Nesterov).

    Args:
        lr: learning rate.
        betas: Adam's moment decays (b1, b2).
        eps: Adam's denominator term, also the cosine-similarity and norm floor.
        weight_decay: decoupled weight decay.
        delta: threshold of the scale-invariance test, ``delta / sqrt(d)`` (the paper's 0.1).
        wd_ratio: weight decay factor for scale-invariant weights (the paper's 0.1).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, delta: float = 0.1, wd_ratio: float = 0.1) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, delta=delta, wd_ratio=wd_ratio)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update(group, params)
        return loss

    def _update(self, group: dict, params: list[torch.Tensor]) -> None:
        beta1, beta2 = group["betas"]
        eps, lr = group["eps"], group["lr"]
        grads = [p.grad for p in params]
        if any(g.is_sparse for g in grads):
            raise RuntimeError("AdamP does not support sparse gradients")
        states = [self.state[p] for p in params]
        for state, p in zip(states, params):
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
        # parameters added to a group later have their own step count: update them by count
        by_step: dict[int, list[int]] = {}
        for index, state in enumerate(states):
            by_step.setdefault(state["step"], []).append(index)
        for step, indices in by_step.items():
            self._update_same_step(group, [params[i] for i in indices], [grads[i] for i in indices],
                                   [states[i] for i in indices], step, beta1, beta2, eps, lr)

    def _update_same_step(self, group, params, grads, states, step, beta1, beta2, eps, lr) -> None:
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)  # m = b1 m + (1 - b1) g
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denoms, math.sqrt(1 - beta2 ** step))
        torch._foreach_add_(denoms, eps)
        perturbs = torch._foreach_div(exp_avgs, denoms)

        decays = [1.0] * len(params)
        for index, (p, g) in enumerate(zip(params, grads)):
            if p.ndim > 1:
                decays[index] = self._project(p, g, perturbs[index], group["delta"], group["wd_ratio"], eps)

        if group["weight_decay"] > 0:
            for ratio in set(decays):
                chosen = [p for p, r in zip(params, decays) if r == ratio]
                torch._foreach_mul_(chosen, 1 - lr * group["weight_decay"] * ratio)
        torch._foreach_add_(params, perturbs, alpha=-lr / (1 - beta1 ** step))

    @staticmethod
    def _project(p: torch.Tensor, g: torch.Tensor, perturb: torch.Tensor, delta: float, wd_ratio: float,
                 eps: float) -> float:
        """Remove the radial component of ``perturb`` in place when ``p`` is scale-invariant,
        first judged per output channel, then for the whole weight; returns the weight-decay
        factor (``wd_ratio`` when projected, else 1)."""
        channels = p.shape[0]
        p2, g2 = p.reshape(channels, 1, -1), g.reshape(channels, -1, 1)
        dots = torch.bmm(p2, g2).view(channels)  # per-channel <p, g>, without a product tensor
        p_norms = torch.linalg.vector_norm(p2, dim=2).view(channels)
        g_norms = torch.linalg.vector_norm(g2, dim=1).view(channels)
        # cosine similarity as torch.nn.functional.cosine_similarity: each norm floored at eps
        channel_cos = (dots / (p_norms.clamp_min(eps) * g_norms.clamp_min(eps))).abs_()
        p_norm = torch.linalg.vector_norm(p_norms)
        layer_cos = (dots.sum() / (p_norm.clamp_min(eps) * torch.linalg.vector_norm(g_norms).clamp_min(eps))).abs_()
        channel_max, layer = torch.stack([channel_cos.max(), layer_cos]).tolist()
        size = p.numel() // channels
        if channel_max < delta / math.sqrt(size):
            # u -= p_hat <p_hat, u> with p_hat = p / (|p| + eps), per channel
            u2 = perturb.reshape(channels, -1, 1)
            coefficient = torch.bmm(p2, u2).view(channels) / p_norms.add(eps).square()
            radial = p2.view(channels, -1) * coefficient.unsqueeze(1)
            perturb.sub_(radial.view(perturb.shape))
            return wd_ratio
        if layer < delta / math.sqrt(p.numel()):
            coefficient = torch.dot(p.reshape(-1), perturb.reshape(-1)) / p_norm.add(eps).square()
            perturb.sub_(p * coefficient)
            return wd_ratio
        return 1.0
