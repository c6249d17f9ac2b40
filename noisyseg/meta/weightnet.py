"""A learned weighting function: Meta-Weight-Net (Shu et al., NeurIPS 2019) for pixels, as in Meta
Corrupted Pixels Mining (Wang et al., MICCAI 2020).

A small MLP maps each noisy pixel's (loss, probability, label) to a weight in (0, 1); optionally also
its distance to the noisy mask's outline (``boundary``), where most annotation errors lie. Its parameters φ
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

from typing import Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from noisyseg.distributed import average_gradients
from noisyseg.errors import ConfigError
from noisyseg.registry import Registry

Feature = Callable[..., Tensor]  # (losses, logits, labels, **its options) -> a map shaped like losses
FEATURES: Registry[Feature] = Registry("weighting-network feature")
DEFAULT_FEATURES = ("loss", "probability", "label")
BOUNDARY_REACH = 0.125  # the boundary feature saturates this far from the outline (a share of the shorter side)

FEATURES.register("loss")(lambda losses, logits, labels: losses)
FEATURES.register("probability")(lambda losses, logits, labels: torch.sigmoid(logits))
FEATURES.register("label")(lambda losses, logits, labels: labels)


@FEATURES.register("boundary")
def boundary_feature(losses: Tensor, logits: Tensor, labels: Tensor, reach: float = BOUNDARY_REACH) -> Tensor:
    """Distance to the noisy mask's outline, 0 next to it and 1 at ``reach`` (a share of the shorter side)
    or farther: a hurried or loose outline is wrong near the outline, rarely far from it."""
    reach = max(1, round(reach * min(labels.shape[-2:])))
    return outline_distance(labels, reach).to(losses.dtype) / reach


def outline_distance(labels: Tensor, reach: int) -> Tensor:
    """Per pixel, the chessboard distance to the nearest pixel of the other class, minus one, capped at
    ``reach``: 0 for a pixel touching the other class. ``labels`` [..., H, W], thresholded at 1/2; the
    frame is not an outline (a mask without both classes is ``reach`` everywhere).

    Grows each class by one pixel ``reach`` times (a 3×3 max-pool), so it costs ``reach`` pools;
    :func:`outline_distance_reference` is the brute-force definition the tests compare it with.
    """
    shape = labels.shape
    lesion = (labels.detach().reshape(-1, 1, *shape[-2:]) > 0.5).float()
    near_lesion, near_skin = lesion, 1 - lesion
    far = torch.zeros_like(lesion)
    for _ in range(reach):
        near_lesion = F.max_pool2d(near_lesion, 3, stride=1, padding=1)  # pads with -inf: no frame outline
        near_skin = F.max_pool2d(near_skin, 3, stride=1, padding=1)
        far += torch.where(lesion > 0, 1 - near_skin, 1 - near_lesion)  # 1 while the other class is still away
    return far.reshape(shape)


def outline_distance_reference(labels: Tensor, reach: int) -> Tensor:
    """:func:`outline_distance` by its definition, pixel by pixel (slow; for tests)."""
    masks = (labels.detach().reshape(-1, *labels.shape[-2:]) > 0.5).cpu()
    out = torch.full(masks.shape, float(reach))
    rows, cols = masks.shape[-2:]
    for b, mask in enumerate(masks):
        for i in range(rows):
            for j in range(cols):
                other = (mask != mask[i, j]).nonzero()
                if len(other):
                    chessboard = torch.maximum((other[:, 0] - i).abs(), (other[:, 1] - j).abs()).min()
                    out[b, i, j] = min(float(chessboard) - 1, reach)
    return out.reshape(labels.shape)


def check_features(features: Sequence[str]) -> tuple[str, ...]:
    """``features`` as a tuple of registered names; a ConfigError for an unknown, repeated or empty list."""
    names = tuple(features)
    for name in names:
        FEATURES.get(name)
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"weighting-network features {list(names)} must be distinct names from "
                          f"{', '.join(FEATURES.names())}")
    return names


class WeightNet(nn.Module):
    """Per-pixel features (by default loss, σ(z), label) -> weight in (0, 1); applied to maps of any shape."""

    def __init__(self, hidden: int = 16, features: Sequence[str] = DEFAULT_FEATURES,
                 boundary_reach: float = BOUNDARY_REACH) -> None:
        super().__init__()
        self.features = check_features(features)
        if not 0 < boundary_reach <= 1:
            raise ConfigError(f"the boundary feature's reach {boundary_reach} must be a share of the image side in (0, 1]")
        self.options = {"boundary": {"reach": boundary_reach}}  # per feature: its keyword arguments
        self.net = nn.Sequential(nn.Linear(len(self.features), hidden), nn.ReLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[2].weight)  # start at w = 0.5 everywhere: uniform weights
        nn.init.zeros_(self.net[2].bias)

    def forward(self, losses: Tensor, logits: Tensor, labels: Tensor) -> Tensor:
        return self.weigh(self.inputs(losses, logits, labels)).to(losses.dtype)

    def inputs(self, losses: Tensor, logits: Tensor, labels: Tensor) -> Tensor:
        """The feature maps stacked in a last dimension (detached): computed once per step, read twice."""
        maps = [FEATURES.get(name)(losses, logits, labels, **self.options.get(name, {})) for name in self.features]
        return torch.stack(maps, dim=-1).detach()

    def weigh(self, inputs: Tensor) -> Tensor:
        """Weights from :meth:`inputs`, in the net's dtype."""
        return torch.sigmoid(self.net(inputs.to(self.net[0].weight.dtype))).squeeze(-1)


class LearnedWeighting:
    """A :class:`WeightNet` and its optimiser: :meth:`update` takes one step on the meta gradient u and
    returns the updated net's (unnormalised) weights for the real step."""

    def __init__(self, hidden: int = 16, lr: float = 1e-3, features: Sequence[str] = DEFAULT_FEATURES,
                 boundary_reach: float = BOUNDARY_REACH) -> None:
        self.net = WeightNet(hidden, features, boundary_reach)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr)
        self._synced = False  # φ copied from rank 0 (distributed steps only)

    def meta_gradient(self, u: Tensor, losses: Tensor, logits: Tensor, labels: Tensor, group: object = None
                      ) -> list[Tensor]:
        """∂L_c/∂φ = 1/N Σ_i u_i ∂w_i/∂φ, to first order in the virtual step (see the module docstring);
        with ``group``, over every rank's pixels."""
        self.net.to(u.device)
        return self._meta_gradient(u, self.net.inputs(losses, logits, labels), group)

    def _meta_gradient(self, u: Tensor, inputs: Tensor, group: object) -> list[Tensor]:
        with torch.enable_grad():
            weights = self.net.weigh(inputs).to(u.dtype)
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
        self.net.to(u.device)
        inputs = self.net.inputs(losses, logits, labels)
        grads = self._meta_gradient(u, inputs, group)
        if bool(torch.isfinite(torch.cat([g.flatten() for g in grads])).all()):  # one host sync
            for param, grad in zip(self.net.parameters(), grads):
                param.grad = grad
            self.optimizer.step()
        with torch.no_grad():
            return self.net.weigh(inputs).to(losses.dtype)

    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
