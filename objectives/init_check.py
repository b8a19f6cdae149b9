"""Fine-tuning from a pretrained backbone that users can trust (issue 28, item 4): the checks of ``init_from``.

A fine-tune whose loaded backbone does not compute what the pretrained model computed trains from a
corrupted start without saying so (fairchem #1486, matgl #251/#264: step-0 errors 100x the source's).
With ``init_from`` set and ``init_check`` on (the default), an objective

1. at ``setup`` (:func:`check_settings`), refuses in one line, naming the option and the value to set:
   a backbone cutoff other than the pretrained one (the weights load -- same shapes -- but every
   distance feature changes), and elements of the new training split that the pretrained backbone never
   saw (their embedding rows were never trained; elements only in validation / test are warned about by
   :mod:`atomzoo.objectives.provenance`). The pretrained side comes from the file: its card (exports,
   ``atomzoo.pretrained`` names) or its provenance record (checkpoints).
2. on the first training batch (:class:`StepZeroCheck`), rebuilds the source backbone from the file
   alone (:func:`atomzoo.model_files.build_backbone`: its own class, constructor arguments and weights),
   runs it and the objective's backbone on that batch in eval mode, prints one line with the largest
   difference of their per-atom features and refuses (``ValueError``) when they differ by more than
   ``1e-5`` relative to the features' scale, naming the constructor arguments that differ.

``--model.init_check false`` skips both (fine-tuning on new elements on purpose, a backbone whose
arguments were changed deliberately).
"""

from __future__ import annotations

import sys

import torch
from atomzoo import model_files

#: relative difference of the per-atom features above which the step-0 check refuses
TOLERANCE = 1e-5


def _element_names(zs) -> str:
    from ase.data import chemical_symbols

    return " ".join(chemical_symbols[int(z)] if 0 <= int(z) < len(chemical_symbols) else str(z) for z in zs)


def source_settings(init_from) -> dict:
    """``{"cutoff", "elements", "init_args"}`` the file records of its backbone (``None`` where not recorded)."""
    record = model_files.read(init_from)
    init_args = dict(record.backbone.get("init_args") or {})
    cutoff = init_args.get("cutoff")
    if cutoff is None and record.card is not None:
        cutoff = record.card.get("cutoff_A")
    if cutoff is None and record.provenance is not None:
        cutoff = record.provenance.get("cutoff")
    return {"cutoff": None if cutoff is None else float(cutoff), "elements": record.elements, "init_args": init_args}


def check_settings(backbone, init_from, data_elements) -> None:
    """Refuse a cutoff other than the pretrained backbone's, or elements it never saw (module docstring).

    Args:
        backbone: the objective's backbone (weights already loaded).
        init_from: the model file or pretrained name.
        data_elements: atomic numbers of the fine-tuning training split, or ``None`` (not checked).

    Raises:
        ValueError: one line naming the option, both values and the fix.
    """
    source = source_settings(init_from)
    ours = getattr(backbone, "cutoff", None)
    if source["cutoff"] is not None and ours is not None and abs(float(ours) - source["cutoff"]) > 1e-9:
        raise ValueError(
            f"init_from={init_from}: the pretrained backbone was trained with cutoff {source['cutoff']:g} A but "
            f"--model.backbone.init_args.cutoff is {float(ours):g} A (the weights load, but every distance feature "
            f"changes); set --model.backbone.init_args.cutoff {source['cutoff']:g}, or --model.init_check false"
        )
    if source["elements"] is not None and data_elements is not None:
        new = sorted(set(int(z) for z in data_elements) - set(int(z) for z in source["elements"]))
        if new:
            raise ValueError(
                f"init_from={init_from}: the data has element(s) {_element_names(new)} that the pretrained backbone "
                f"never saw (it knows {_element_names(sorted(source['elements']))}): their embeddings are untrained; "
                "fine-tune on data of the known elements, or pass --model.init_check false to train them from scratch"
            )


class StepZeroCheck:
    """The source backbone, rebuilt from the file at ``setup`` and compared on the first training batch.

    Not an ``nn.Module`` attribute of the objective (it is no part of the model and never saved);
    dropped after the check.
    """

    def __init__(self, init_from) -> None:
        self.init_from = init_from
        record = model_files.read(init_from)
        spec = record.backbone
        with torch.random.fork_rng(devices=[]):  # building it draws initial weights: leave the run's RNG as it was
            self.reference = model_files.build_backbone(init_from) if spec.get("init_args_complete") else None
        self.init_args = dict(spec.get("init_args") or {})

    @torch.no_grad()
    def run(self, backbone, batch) -> str:
        """Compare ``backbone`` with the source on ``batch``; returns the line printed.

        Raises:
            ValueError: the features differ by more than :data:`TOLERANCE` (relative), naming the
                constructor arguments that differ from the file's.
        """
        if self.reference is None:
            return (f"zoo: step-0 check skipped: {self.init_from} does not record every constructor argument of its "
                    "backbone, so it cannot be rebuilt on its own")  # fmt: skip
        reference = self.reference.to(device=batch.pos.device, dtype=next(backbone.parameters()).dtype)
        was_training = backbone.training
        backbone.eval()
        try:
            ours = backbone(batch.clone()).scalars
            theirs = reference(batch.clone()).scalars
        finally:
            backbone.train(was_training)
        scale = float(theirs.abs().max()) if theirs.numel() else 0.0
        diff = float((ours - theirs).abs().max()) if ours.shape == theirs.shape else float("inf")
        where = f"{int(batch.num_graphs)} structures, {int(batch.pos.size(0))} atoms"
        if not diff <= TOLERANCE * max(scale, 1.0):
            from atomzoo.model_files import backbone_init_args

            mine, _ = backbone_init_args(backbone)
            differ = [f"{k}: file {v!r}, model {mine.get(k)!r}" for k, v in sorted(self.init_args.items())
                      if k in mine and mine[k] != v]  # fmt: skip
            raise ValueError(
                f"init_from={self.init_from}: step-0 check failed: the loaded backbone does not reproduce the pretrained "
                f"one on the first batch ({where}): max |difference| {diff:.3g} of features up to {scale:.3g}"
                + (f"; constructor arguments that differ: {'; '.join(differ)}" if differ else "")
                + "; give the backbone the pretrained run's arguments (see the model card), or --model.init_check false"
            )
        return (f"zoo: step-0 check: the backbone reproduces init_from={self.init_from} on the first batch ({where}): "
                f"max |difference| {diff:.1e} of features up to {scale:.3g}")  # fmt: skip


def announce(line: str) -> None:
    """Print a check's line (stderr, one line, flushed)."""
    print(line, file=sys.stderr, flush=True)


__all__ = ["TOLERANCE", "StepZeroCheck", "announce", "check_settings", "source_settings"]
