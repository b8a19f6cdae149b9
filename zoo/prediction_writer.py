"""``zoo predict --out preds.csv``: predictions of any DataModule's predict split written to a file.

A Lightning ``BasePredictionWriter`` callback on the outputs of the objective's ``predict_step``
(``{"idx", "prediction", "forces", "batch", "targets"}`` for :class:`~atomzoo.objectives.Regression`:
its one prediction path, ``Regression.predict_properties``), batch by batch (the CSV rows are written
as they come; memory stays bounded for CSV). The writer only reads those outputs.

Files, with units in every column name (``energy_eV``, ``fx_eV_per_A``; the suffix is the unit with
``/`` written ``_per_``, :func:`atomzoo.units.unit_suffix`):

- ``.csv``: ``preds.csv``, one row per molecule: ``id`` (the DataModule's name for it: ``file.xyz:3``
  for ASE files -- the 0-based structure number in the file -- or the store row), ``index`` (store
  row), ``n_atoms``, one column per target, and ``<target>_ref_<unit>`` with the data's label where
  it has a finite one. With forces also ``preds.atoms.csv``, one row per atom: ``id``, ``index``,
  ``atom`` (0-based within the molecule), ``Z``, ``fx/fy/fz_<unit>`` and ``ref_fx/...`` where known.
  A stress model (``--data.stress_key``) adds ``stress_xx ... stress_xy_<unit>`` to the molecule rows,
  in ASE's Voigt order ``(xx, yy, zz, yz, xz, xy)`` and sign (``eV_per_A^3``), and the data's
  ``stress_ref_*`` where known; both are empty for structures that are not fully periodic.
- ``.npz``: arrays ``id`` [M] str, ``index`` [M], ``n_atoms`` [M], ``<target>_<unit>`` [M],
  ``forces_<unit>`` [N, 3], ``z`` [N], ``molecule`` [N] (row of each atom's molecule) and the
  ``*_ref_*`` arrays as above (NaN where unknown); a stress model adds ``stress_<unit>`` ``[M, 6]``
  (Voigt order) and ``stress_ref_<unit>``.

Under DDP each rank writes ``<stem>.rank<k><suffix>``. ``zoo predict`` makes no run folder; it prints
:meth:`PredictionWriter.summary` at the end, the absolute paths written
(``zoo predict: wrote 5 molecules to /home/me/preds.csv``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from atomzoo.units import unit_suffix

class PredictionWriter(BasePredictionWriter):
    """Write ``zoo predict`` outputs to ``out`` (``.csv`` or ``.npz``).

    Args:
        out: output file; its suffix chooses the format.

    Raises:
        ValueError: the suffix is neither ``.csv`` nor ``.npz``, or the model's predict step does not
            return the regression outputs (``idx``, ``prediction``, ``targets``).
    """

    def __init__(self, out: str) -> None:
        super().__init__(write_interval="batch")
        self.out = Path(out)
        if self.out.suffix not in (".csv", ".npz"):
            raise ValueError(f"--out {out}: choose a .csv or .npz file name")
        self._files: list = []
        self._writers: dict = {}
        self._npz: dict[str, list] = {}
        self._written: list[Path] = []
        self._molecules = 0

    # ----- helpers --------------------------------------------------------------------------------
    def _path(self, trainer, suffix: str = "") -> Path:
        stem = self.out.stem + suffix
        if trainer.world_size > 1:
            stem += f".rank{trainer.global_rank}"
        return self.out.with_name(stem + self.out.suffix)

    @staticmethod
    def _ids(trainer, index: np.ndarray) -> list[str]:
        datamodule = getattr(trainer, "datamodule", None)
        namer = getattr(datamodule, "molecule_ids", None)
        return list(namer(index)) if callable(namer) else [str(i) for i in index]

    def _csv(self, trainer, key: str, header: list[str]):
        if key not in self._writers:
            path = self._path(trainer, "" if key == "molecules" else ".atoms")
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "w", newline="")
            self._files.append(handle)
            self._written.append(path)
            writer = csv.writer(handle)
            writer.writerow(header)
            self._writers[key] = writer
        return self._writers[key]

    # ----- Lightning hooks ------------------------------------------------------------------------
    def on_predict_start(self, trainer, pl_module) -> None:
        self._files, self._writers, self._npz, self._written, self._molecules = [], {}, {}, [], 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:
        if not isinstance(prediction, dict) or not {"idx", "prediction", "targets"} <= set(prediction):
            raise ValueError(
                f"--out needs a model whose predict_step returns idx/prediction/targets (Regression); "
                f"{type(pl_module).__name__} returned {type(prediction).__name__}"
            )
        targets = list(prediction["targets"])
        units = list(getattr(pl_module, "units", [""] * len(targets)))
        index = prediction["idx"].detach().cpu().numpy().reshape(-1)
        self._molecules += index.size
        ids = self._ids(trainer, index)
        pred = prediction["prediction"].detach().double().cpu().numpy()
        graph_of_atom = batch.batch.detach().cpu().numpy()
        n_atoms = np.bincount(graph_of_atom, minlength=index.size)
        ref = getattr(batch, "y", None)
        ref = ref.detach().double().cpu().numpy() if ref is not None and ref.shape == pred.shape else np.full_like(pred, np.nan)
        names = [f"{t}_{unit_suffix(u)}" for t, u in zip(targets, units)]
        ref_names = [f"{t}_ref_{unit_suffix(u)}" for t, u in zip(targets, units)]
        forces = prediction.get("forces")
        force_unit = unit_suffix(getattr(pl_module, "force_unit", "")) if forces is not None else None
        if forces is not None:
            forces = forces.detach().double().cpu().numpy()
            ref_f = getattr(batch, "forces", None)
            ref_f = ref_f.detach().double().cpu().numpy() if ref_f is not None else np.full_like(forces, np.nan)
            z = batch.z.detach().cpu().numpy()
            atom_in_mol = np.arange(graph_of_atom.size) - np.concatenate([[0], np.cumsum(n_atoms)[:-1]])[graph_of_atom]
        stress = prediction.get("stress")
        stress_names = []
        if stress is not None:  # [G, 3, 3] -> ASE's Voigt order, NaN rows for structures without one
            from ase.stress import full_3x3_to_voigt_6_stress as to_voigt

            unit = unit_suffix(getattr(pl_module, "stress_unit", ""))
            stress_names = [f"stress_{c}_{unit}" for c in ("xx", "yy", "zz", "yz", "xz", "xy")]
            stress_names += [f"stress_ref_{c}_{unit}" for c in ("xx", "yy", "zz", "yz", "xz", "xy")]
            stress = to_voigt(stress.detach().double().cpu().numpy()).reshape(-1, 6)
            ref_s = getattr(batch, "stress", None)
            if ref_s is None:
                ref_s = np.full_like(stress, np.nan)
            else:
                ref_s = to_voigt(ref_s.detach().reshape(-1, 3, 3).double().cpu().numpy()).reshape(-1, 6)
        if self.out.suffix == ".csv":
            writer = self._csv(trainer, "molecules", ["id", "index", "n_atoms", *names, *ref_names, *stress_names])
            for g in range(index.size):
                extra = [*stress[g].tolist(), *ref_s[g].tolist()] if stress_names else []
                writer.writerow([ids[g], int(index[g]), int(n_atoms[g]), *map(repr, pred[g].tolist()),
                                 *("" if not np.isfinite(v) else repr(v) for v in [*ref[g].tolist(), *extra])])  # fmt: skip
            if forces is not None:
                cols = [f"{c}_{force_unit}" for c in ("fx", "fy", "fz")]
                atoms = self._csv(trainer, "atoms", ["id", "index", "atom", "Z", *cols, *(f"ref_{c}" for c in cols)])
                for a in range(graph_of_atom.size):
                    g = graph_of_atom[a]
                    atoms.writerow([ids[g], int(index[g]), int(atom_in_mol[a]), int(z[a]), *map(repr, forces[a].tolist()),
                                    *("" if not np.isfinite(v) else repr(v) for v in ref_f[a].tolist())])  # fmt: skip
            return
        offset = sum(len(v) for v in self._npz.get("index", []))
        self._npz.setdefault("id", []).append(np.asarray(ids))
        self._npz.setdefault("index", []).append(index)
        self._npz.setdefault("n_atoms", []).append(n_atoms)
        for k, (name, ref_name) in enumerate(zip(names, ref_names)):
            self._npz.setdefault(name, []).append(pred[:, k])
            self._npz.setdefault(ref_name, []).append(ref[:, k])
        if stress_names:
            self._npz.setdefault(stress_names[0].replace("_xx", ""), []).append(stress)
            self._npz.setdefault(stress_names[6].replace("_xx", ""), []).append(ref_s)
        if forces is not None:
            self._npz.setdefault(f"forces_{force_unit}", []).append(forces)
            self._npz.setdefault(f"forces_ref_{force_unit}", []).append(ref_f)
            self._npz.setdefault("z", []).append(z)
            self._npz.setdefault("molecule", []).append(graph_of_atom + offset)

    def on_predict_end(self, trainer, pl_module) -> None:
        for handle in self._files:
            handle.close()
        self._files, self._writers = [], {}
        if self.out.suffix == ".npz" and self._npz:
            path = self._path(trainer)
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, **{k: np.concatenate(v) for k, v in self._npz.items()})
            self._npz = {}
            self._written.append(path)

    def summary(self) -> str:
        """One line naming the files the last prediction wrote (absolute paths), or ``""`` before any."""
        if not self._written:
            return ""
        also = "".join(f" (per atom: {p.resolve()})" for p in self._written[1:])
        return f"zoo predict: wrote {self._molecules} molecules to {self._written[0].resolve()}{also}"


__all__ = ["PredictionWriter"]
