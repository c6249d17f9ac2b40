"""A learned weighting function: Meta-Weight-Net (Shu et al., NeurIPS 2019) for pixels, as in Meta
Corrupted Pixels Mining (Wang et al., MICCAI 2020).

A small MLP maps each noisy pixel's (loss, probability, label) to a weight in (0, 1). Its parameters φ
learn from the meta gradient: with the virtual step ``θ' = θ − α/N Σ_i w_i(φ) ∇ℓ_i(θ)``, to first order
in α

    ∂L_c(θ')/∂φ = 1/N Σ_i u_i ∂w_i/∂φ,    u_i = −α ⟨∇ℓ_i(θ), g⟩,

and u is exactly what the forward-mode backends compute, so training φ costs one tiny backward through
the MLP (tests check the identity against double backward in float64). Unlike the per-step weights of
L2RW, the function is shared across steps and images, so what it learns early — while wrong labels are
told apart — carries over to later steps.

Distributed (a process group), the sum and N run over every rank's pixels in one all-reduce, so each
rank takes the same Adam step as one process would on all ranks' batches; the first such step copies
rank 0's φ to every rank, so the ranks start, and stay, identical.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from noisyseg.distributed import average_gradients

FEATURES = ("loss", "probability", "label")


class WeightNet(nn.Module):
    """(loss, σ(z), label) per pixel -> weight in (0, 1); applied to maps of any shape."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(len(FEATURES), hidden), nn.ReLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[2].weight)  # start at w = 0.5 everywhere: uniform weights
        nn.init.zeros_(self.net[2].bias)

    def forward(self, losses: Tensor, logits: Tensor, labels: Tensor) -> Tensor:
        features = torch.stack([losses, torch.sigmoid(logits), labels], dim=-1).detach()
        return torch.sigmoid(self.net(features.to(self.net[0].weight.dtype))).squeeze(-1).to(losses.dtype)


class LearnedWeighting:
    """A :class:`WeightNet` and its optimiser: :meth:`update` takes one step on the meta gradient u and
    returns the updated net's (unnormalised) weights for the real step."""

    def __init__(self, hidden: int = 16, lr: float = 1e-3) -> None:
        self.net = WeightNet(hidden)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr)
        self._synced = False  # φ copied from rank 0 (distributed steps only)

    def meta_gradient(self, u: Tensor, losses: Tensor, logits: Tensor, labels: Tensor, group: object = None
                      ) -> list[Tensor]:
        """∂L_c/∂φ = 1/N Σ_i u_i ∂w_i/∂φ, to first order in the virtual step (see the module docstring);
        with ``group``, over every rank's pixels."""
        self.net.to(u.device)
        with torch.enable_grad():
            weights = self.net(losses, logits, labels)
            grads = torch.autograd.grad((u.detach() * weights).sum() / u.numel(), list(self.net.parameters()))
        return list(grads) if group is None else average_gradients(list(grads), u.numel(), group)

    def update(self, u: Tensor, losses: Tensor, logits: Tensor, labels: Tensor, group: object = None) -> Tensor:
        """One Adam step on the meta gradient (none if it is not finite: the step is then reported as
        non-finite, on every rank alike); the updated net's weights."""
        if group is not None and not self._synced:
            self.net.to(u.device)
            for param in self.net.parameters():
                dist.broadcast(param.data, group=group, group_src=0)
            self._synced = True
        grads = self.meta_gradient(u, losses, logits, labels, group)
        if bool(torch.isfinite(torch.cat([g.flatten() for g in grads])).all()):  # one host sync
            for param, grad in zip(self.net.parameters(), grads):
                param.grad = grad
            self.optimizer.step()
        with torch.no_grad():
            return self.net(losses, logits, labels)

    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
