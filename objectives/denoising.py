"""Coordinate denoising pretraining (Zaidi et al., ICLR 2023, arXiv 2206.00133; methods.md).

Every atom position is corrupted with isotropic Gaussian noise, ``pos~ = pos + sigma * eps`` with
``eps ~ N(0, I)`` per atom and component; the backbone sees ``pos~`` and an equivariant per-atom
vector head (:class:`~atomzoo.objectives.heads.NoiseHead`: the backbone's vector features when it has them,
otherwise the edge-direction head) predicts the noise.

Target standardisation (choice documented here): the target is the noise divided by the sigma of
its molecule, ``eps = (pos~ - pos) / sigma`` -- dimensionless, mean 0 and variance exactly 1 per
component for every sigma. methods.md standardises by a running std; with a known sigma the exact
per-molecule std is available, which also makes a *list* of sigmas (one drawn per molecule) weigh
equally. Loss = MSE between prediction and ``eps`` (mean over atoms and components); a model that
predicts 0 scores 1.0 (``(n-1)/n`` with ``center_noise``).

Validation noise is drawn from a generator seeded by the batch index (the base class's seeded
evaluation), so ``val/loss`` is comparable across epochs.

Noise sampling and its validation live in :mod:`atomzoo.objectives.noise` (re-exported here:
:func:`sample_sigma`, :func:`gaussian_noise`). :class:`AuxDenoising` is the auxiliary "noisy nodes"
loss that :class:`~atomzoo.objectives.regression.Regression` adds during fine-tuning with
``aux_denoising_weight > 0``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

from atomzoo.backbones.base import Backbone
from atomzoo.nn.batch import num_graphs, with_positions

from .base import Objective
from .noise import check_sigma, gaussian_noise, sample_sigma
from .heads import NoiseHead


class NoiseNormalizer(nn.Module):
    """How a noise head's target is standardised: ``target = noise / scale`` or running moments.

    Two modes (buffers, so they travel in checkpoints):

    * fixed scale (default): ``target = noise / scale`` -- :class:`Denoising`'s standardisation
      (``scale`` = the noise sigma the head was trained with);
    * running moments (``running``, copied from an SCD checkpoint's ``target_stats``):
      ``target = (noise - mean) / std`` per component, the moments updated with every training
      batch's noise (as the SCD and Zaidi et al. fine-tuning code keep updating theirs).

    Shapes: ``noise`` ``[N, 3]`` (Angstrom) -> ``[N, 3]`` dimensionless.
    """

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(float(scale), dtype=torch.float64))
        self.register_buffer("running", torch.tensor(False))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(3, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(3, dtype=torch.float64))

    @torch.no_grad()
    def update(self, noise: Tensor) -> None:
        """Add ``noise`` to the running moments (exact pooled moments; no-op in fixed-scale mode)."""
        if not bool(self.running):
            return
        x = noise.detach().reshape(-1, 3).double()
        n = x.size(0)
        if n == 0:
            return
        batch_mean = x.mean(0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += (x - batch_mean).square().sum(0) + delta.square() * self.count * n / total
        self.count.fill_(total)

    def forward(self, noise: Tensor) -> Tensor:
        if bool(self.running) and self.count >= 2:
            std = (self.m2 / (self.count - 1)).sqrt().clamp_min(1e-12)
            return (noise - self.mean.to(noise.dtype)) / std.to(noise.dtype)
        return noise / self.scale.to(noise.dtype)


class AuxDenoising(nn.Module):
    """Auxiliary denoising loss for fine-tuning ("noisy nodes").

    Zaidi et al. (arXiv 2206.00133) and SCD (Perez & Gomez-Bombarelli, arXiv 2603.17196) fine-tune
    on positions corrupted by a little Gaussian noise (sigma 0.005 A) and let the SAME forward pass
    predict both the property and the noise: ``loss = property_loss + weight * MSE(head, target)``.
    This module holds the noise head and the target normaliser; the objective runs the backbone
    once on :meth:`corrupt`'s positions and passes the output to :meth:`loss_from_output`.

    Args:
        backbone: the backbone the head sits on (for its width / vector features / cutoff).
        sigma: fine-tuning noise in Angstrom (> 0).
        head: noise head kind, ``"auto"`` | ``"vector"`` | ``"edge"`` (:class:`NoiseHead`).
        head_hidden: hidden size of the head (default the backbone width).

    Without a pretrained head the target is ``noise / sigma`` (variance 1). :meth:`load_pretrained`
    takes over the noise head of a Denoising / SCD checkpoint together with its normaliser
    (Denoising: ``noise / sigma_pretraining``; SCD: its running per-component moments), as the
    references do, so the head keeps predicting in the units it was trained in.
    """

    def __init__(
        self, backbone: Backbone, sigma: float = 0.005, head: str = "auto", head_hidden: int | None = None
    ) -> None:
        super().__init__()
        if not isinstance(sigma, (int, float)):
            raise ValueError(f"aux_denoising_sigma must be one number (Angstrom), got {sigma}")
        self.sigma = float(check_sigma(sigma, "aux_denoising_sigma"))
        self.head = NoiseHead(backbone, head, head_hidden)
        self.normalizer = NoiseNormalizer(self.sigma)
        self.pretrained_from: str | None = None

    def corrupt(self, data, generator: torch.Generator | None = None) -> tuple[object, Tensor]:
        """``(noisy data, noise [N, 3])``: positions plus ``N(0, sigma^2)`` per atom and component."""
        sig = sample_sigma(self.sigma, num_graphs(data), data.pos.device)
        noise = gaussian_noise(data.pos, data.batch, sig, generator=generator)
        return with_positions(data, data.pos + noise), noise

    def loss_from_output(self, out, noise: Tensor, update: bool = False) -> Tensor:
        """MSE between the head's prediction on ``out`` (a :class:`BackboneOutput` of the noisy
        pass) and the standardised ``noise``; ``update`` feeds the noise to a running normaliser first."""
        if update:
            self.normalizer.update(noise)
        pred = self.head(out.scalars, out.vectors, out.graph)
        return (pred - self.normalizer(noise)).pow(2).mean()

    def loss(self, backbone: Backbone, data) -> Tensor:
        """One backbone pass on corrupted ``data`` and its denoising loss (dimensionless scalar)."""
        noisy, noise = self.corrupt(data)
        return self.loss_from_output(backbone(noisy), noise)

    @staticmethod
    def pretrained_head_config(path) -> dict | None:
        """The noise head found in the Lightning checkpoint ``path``, or ``None``.

        Returns ``{"state": head state_dict, "kind", "hidden", "scale", "moments"}``: the weights of
        a Denoising / SCD ``head.*`` (or a fine-tuned Regression's ``aux_denoising.head.*``), the
        head options from the checkpoint's hyperparameters, the fixed normalising scale (Denoising's
        ``sigma``; ``None`` for a sigma list) and SCD's running moments (``target_stats.*``) if any.
        ``.safetensors`` exports hold no noise head: ``None``. The file is read by
        :func:`atomzoo.model_files.read` (once per run, shared with ``init_from``'s other readers).
        """
        from pathlib import Path

        from atomzoo import model_files

        if not Path(path).exists():
            return None
        record = model_files.read(path)
        if record.kind != model_files.CHECKPOINT:
            return None
        state = record.state_dict
        hparams = record.hyperparameters
        for prefix in ("head.", "aux_denoising.head."):
            head = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if head:
                break
        else:
            return None
        config = {"state": head, "kind": hparams.get("head", "auto"), "hidden": hparams.get("head_hidden"),
                  "scale": None, "moments": None}
        if prefix == "aux_denoising.head.":
            config.update(kind="auto", hidden=None)
            config["normalizer"] = {k[len("aux_denoising.normalizer."):]: v for k, v in state.items()
                                    if k.startswith("aux_denoising.normalizer.")}
        elif "target_stats.count" in state:
            config["moments"] = {k: state[f"target_stats.{k}"] for k in ("count", "mean", "m2")}
        elif isinstance(hparams.get("sigma"), (int, float)):
            config["scale"] = float(hparams["sigma"])
        return config

    def load_pretrained(self, backbone: Backbone, path) -> bool:
        """Take over the pretrained noise head and its target normaliser from checkpoint ``path``.

        Returns False (nothing changed) when ``path`` holds no noise head (JEPA, safetensors). A
        head of another kind / size than this one is rebuilt from the checkpoint's options.
        Raises ``ValueError`` if its weights still do not fit.
        """
        config = self.pretrained_head_config(path)
        if config is None:
            return False
        try:
            head = NoiseHead(backbone, config["kind"], config["hidden"])
            head.load_state_dict(config["state"], strict=True)
        except (RuntimeError, ValueError) as err:
            raise ValueError(
                f"init_from={path}: its noise head does not fit this backbone ({err}); "
                "set --model.aux_denoising_pretrained_head false to start a fresh head"
            ) from err
        self.head = head
        if config.get("normalizer"):
            self.normalizer.load_state_dict(config["normalizer"])
        elif config["moments"] is not None:
            with torch.no_grad():
                for name, value in config["moments"].items():
                    getattr(self.normalizer, name).copy_(value)
                self.normalizer.running.fill_(True)
        elif config["scale"] is not None:
            self.normalizer.scale.fill_(config["scale"])
        self.pretrained_from = str(path)
        return True


class Denoising(Objective):
    """Coordinate denoising on any backbone (module docstring for the details).

    Args:
        backbone: any backbone.
        sigma: noise level in Angstrom (default 0.04, Zaidi et al.), or a list: one value drawn per
            molecule each step. Must be positive.
        center_noise: subtract each molecule's mean noise (no rigid translation in the corruption).
        head: noise head, ``"auto"`` (vector features if the backbone has them, else edges),
            ``"vector"`` or ``"edge"``.
        head_hidden: hidden size of the head (default the backbone width).
        diagnostics_every_n_steps: log the collapse diagnostics (``train/emb_std``, ``emb_erank``,
            ``emb_sigreg``) of the mean-pooled backbone scalars every this many steps (0: never).
        Other arguments: see :class:`~atomzoo.objectives.base.Objective` (optimizer, schedule, EMA,
        ``init_from``, ``freeze_backbone``).

    Logs ``train/loss``, ``val/loss`` (dimensionless MSE to the standardised noise).
    """

    def __init__(
        self,
        backbone: Backbone,
        sigma: float | list[float] = 0.04,
        center_noise: bool = False,
        head: str = "auto",
        head_hidden: int | None = None,
        diagnostics_every_n_steps: int = 50,
        **kwargs,
    ) -> None:
        super().__init__(backbone, **kwargs)
        self.save_hyperparameters()
        self.sigma = check_sigma(sigma)
        self.center_noise = center_noise
        self.diagnostics_every_n_steps = diagnostics_every_n_steps
        self.head = NoiseHead(backbone, head, head_hidden)

    def forward(self, data) -> Tensor:
        """Predicted standardised noise ``[N, 3]`` for (already noisy) positions ``data.pos``."""
        out = self.backbone(data)
        return self.head(out.scalars, out.vectors, out.graph)

    def compute_loss(self, data, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``{"loss", "embedding" [G, F]}`` for one batch of clean molecules (embedding: mean-pooled
        scalars of the noisy pass, for the collapse diagnostics)."""
        g = num_graphs(data)
        sig = sample_sigma(self.sigma, g, data.pos.device, generator)
        noise = gaussian_noise(data.pos, data.batch, sig, self.center_noise, generator)
        out = self.backbone(with_positions(data, data.pos + noise))
        pred = self.head(out.scalars, out.vectors, out.graph)
        target = noise / sig[data.batch].unsqueeze(-1)
        pooled = scatter(out.scalars, data.batch, dim=0, dim_size=g, reduce="mean")
        return {"loss": (pred - target).pow(2).mean(), "embedding": pooled}


__all__ = ["AuxDenoising", "Denoising", "NoiseNormalizer", "gaussian_noise", "sample_sigma"]
