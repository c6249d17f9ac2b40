"""Co-teaching for pixels (Han et al., NeurIPS 2018), with JoCoR's joint agreement as an option
(Wei, Feng, Chen, An, CVPR 2020).

Two networks see the same batch. Each ranks the noisy images' pixels by its own loss and hands the
small-loss ones to the other, which trains on those pixels only (plus every expert pixel); the kept
share of noisy pixels falls from 1 to ``1 - forget_rate`` linearly over ``rampup_epochs`` epochs, then
stays (Han et al.'s schedule, counted in steps). With ``agreement = lambda > 0`` it is JoCoR instead: both
networks rank pixels by one joint loss ``(1 - lambda)(l1 + l2) + lambda * symmetric KL(p1, p2)`` and
both train on its small-loss pixels.

The Trainer owns one network and one optimiser: the main one, which is evaluated and checkpointed as
the model. This method owns the second network (a copy of the main one re-initialised with seed
``init_seed + 1``, so the two start apart) and its optimiser (``optimizer``, same learning rate as the
main one at every step), and steps it inside :meth:`CoTeaching.step`; both go into the method's
state, so resume is exact. **Cost: every step trains two networks, about twice the plain step.**
Single process only: under torchrun the second network is not synchronised across ranks.
"""
from __future__ import annotations

import copy

import torch

from noisyseg.errors import ConfigError
from noisyseg.losses import PixelLoss
from noisyseg.methods import METHODS, Batch, StepOutput
from noisyseg.optim import OPTIMIZERS
from noisyseg.rivals.streams import TwoStreamMethod, joined, unwrapped


def kept_share(step: int, forget_rate: float, rampup_steps: int) -> float:
    """Share of noisy pixels kept at ``step``: 1 - forget_rate * min(step / rampup_steps, 1)."""
    return 1.0 - forget_rate * min(step / max(rampup_steps, 1), 1.0)


@torch.no_grad()
def small_loss_mask(losses: torch.Tensor, share: float) -> torch.Tensor:
    """True on the ``ceil(share * N)`` smallest of the ``N`` values of ``losses`` (ties by position)."""
    flat = losses.flatten()
    keep = max(1, int(torch.ceil(torch.tensor(share * flat.numel())).item()))
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[torch.argsort(flat, stable=True)[:keep]] = True
    return mask.view_as(losses)


def symmetric_kl(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """KL(p||q) + KL(q||p) per pixel for Bernoulli probabilities."""
    p, q = p.clamp(eps, 1 - eps), q.clamp(eps, 1 - eps)
    return (p - q) * (torch.log(p) - torch.log(q)) + (q - p) * (torch.log1p(-p) - torch.log1p(-q))


@METHODS.register("coteach")
class CoTeaching(TwoStreamMethod):
    """Pixel-level co-teaching (Han et al., NeurIPS 2018) / JoCoR (Wei et al., CVPR 2020) of two networks.

    Args:
        forget_rate: share of noisy pixels dropped after the ramp-up (an estimate of the noise rate).
        rampup_epochs: epochs over which the kept share falls from 1 to ``1 - forget_rate``.
        steps_per_epoch: the trainer's steps per epoch (``${trainer.steps_per_epoch}``).
        agreement: JoCoR's lambda; 0 is co-teaching.
        optimizer, weight_decay: the second network's optimiser (``${optim.name}``, ``${optim.weight_decay}``).
        init_seed: the second network is initialised with ``init_seed + 1`` (``${seed}``).
    """

    def __init__(self, loss: PixelLoss, clean_share: float | None = None, forget_rate: float = 0.2,
                 rampup_epochs: float = 5, steps_per_epoch: int = 50, agreement: float = 0.0, optimizer: str = "adam",
                 weight_decay: float = 0.0, init_seed: int = 0) -> None:
        super().__init__(loss, clean_share)
        if not 0 <= forget_rate < 1 or not 0 <= agreement < 1 or optimizer not in OPTIMIZERS:
            raise ConfigError(f"coteach needs forget_rate and agreement in [0, 1) and optimizer in {', '.join(OPTIMIZERS)}")
        self.forget_rate, self.rampup_steps = forget_rate, max(1, round(rampup_epochs * steps_per_epoch))
        self.agreement, self.optimizer_name, self.weight_decay, self.init_seed = agreement, optimizer, weight_decay, init_seed
        self.peer: torch.nn.Module | None = None
        self.peer_optimizer: torch.optim.Optimizer | None = None
        self.steps = 0
        self._pending: dict | None = None  # a checkpoint's peer state, loaded when the peer is built

    def _build_peer(self, model: torch.nn.Module, lr: float) -> None:
        """The second network: the main one's architecture, re-initialised from its own seed."""
        self.peer = copy.deepcopy(unwrapped(model))
        with torch.random.fork_rng(devices=[]):  # leaves the main run's random stream untouched
            torch.manual_seed(self.init_seed + 1)
            for module in self.peer.modules():
                if module is not self.peer and hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        self.peer_optimizer = OPTIMIZERS.build(self.optimizer_name, params=self.peer.parameters(), lr=lr,
                                               weight_decay=self.weight_decay)
        if self._pending is not None:
            self.peer.load_state_dict(self._pending["peer"])
            self.peer_optimizer.load_state_dict(self._pending["peer_optimizer"])
            self._pending = None

    def step(self, model: torch.nn.Module, batches: dict[str, Batch], lr: float) -> StepOutput:
        if self.peer is None:
            self._build_peer(model, lr)
        images, masks = joined(batches, "image"), joined(batches, "mask")
        n = len(batches["noisy"]["image"])
        self.peer.train(model.training)
        logits, peer_logits = model(images), self.peer(images)  # [B, 1, H, W] each
        share = kept_share(self.steps, self.forget_rate, self.rampup_steps)
        losses, peer_losses = self.loss.per_pixel(logits, masks), self.loss.per_pixel(peer_logits, masks)
        if self.agreement > 0:  # JoCoR: one joint loss ranks the pixels for both networks
            losses, peer_losses = self._joint(logits, peer_logits, losses, peer_losses)
            keep = peer_keep = self._keep(losses.detach(), n, share)
        else:  # co-teaching: each network trains on the pixels its peer finds small-loss
            keep, peer_keep = self._keep(peer_losses.detach(), n, share), self._keep(losses.detach(), n, share)
        self._train_peer(peer_losses, peer_keep, lr)
        self.steps += 1
        logs = {"coteach_kept_share": share, **keep_logs(keep[:n], batches["noisy"])}
        return StepOutput((losses * keep).sum() / keep.sum(), logs)

    def _joint(self, logits: torch.Tensor, peer_logits: torch.Tensor, losses: torch.Tensor, peer_losses: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """JoCoR's joint loss twice, equal in value: with the peer detached (its gradient is the joint
        loss's gradient for the main network) and with the main network detached (for the peer), so
        that each network's update stays in its own graph."""
        lam = self.agreement
        p, q = torch.sigmoid(logits), torch.sigmoid(peer_logits)
        main = (1 - lam) * (losses + peer_losses.detach()) + lam * symmetric_kl(p, q.detach())
        peer = (1 - lam) * (losses.detach() + peer_losses) + lam * symmetric_kl(p.detach(), q)
        return main, peer

    @staticmethod
    def _keep(losses: torch.Tensor, n: int, share: float) -> torch.Tensor:
        """1 on every expert pixel and on the small-loss share of the noisy images' pixels."""
        keep = torch.ones_like(losses)
        keep[:n] = small_loss_mask(losses[:n], share).to(losses.dtype)
        return keep

    def _train_peer(self, peer_losses: torch.Tensor, keep: torch.Tensor, lr: float) -> None:
        for group in self.peer_optimizer.param_groups:
            group["lr"] = lr  # the main schedule's rate
        self.peer_optimizer.zero_grad(set_to_none=True)
        loss = (peer_losses * keep).sum() / keep.sum()
        loss.backward()  # the peer's graph only: the main network's loss is backpropagated by the Trainer
        self.peer_optimizer.step()

    def state_dict(self) -> dict:
        state = {"steps": self.steps}
        if self.peer is not None:
            state.update(peer=self.peer.state_dict(), peer_optimizer=self.peer_optimizer.state_dict())
        elif self._pending is not None:
            state.update(self._pending)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.steps = state.get("steps", 0)
        if "peer" not in state:
            return
        if self.peer is None:
            self._pending = {"peer": state["peer"], "peer_optimizer": state["peer_optimizer"]}
        else:
            self.peer.load_state_dict(state["peer"])
            self.peer_optimizer.load_state_dict(state["peer_optimizer"])


@torch.no_grad()
def keep_logs(keep: torch.Tensor, noisy: Batch) -> dict[str, float]:
    """Diagnostics only (synthetic noise): the share of wrong-label pixels among kept and dropped ones."""
    wrong = ((noisy["mask"] > 0.5) != (noisy["true_mask"] > 0.5)).float()
    kept = keep > 0.5
    logs = {}
    if kept.any():
        logs["coteach_wrong_in_kept"] = wrong[kept].mean().item()
    if (~kept).any():
        logs["coteach_wrong_in_dropped"] = wrong[~kept].mean().item()
    return logs
