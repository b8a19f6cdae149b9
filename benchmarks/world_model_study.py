"""The world-model study of issue 27: does LeWorldModel's recipe learn physics from molecular dynamics?

Stages, each resumable (a finished stage is skipped when its output exists), run in order by ``all``:

``data``      GFN2-xTB Langevin MD of 32 QM9 molecules (5-9 heavy atoms, a seeded choice; 300/400/500/600 K
              cycled; 150 frames 5 fs apart after 200 fs of equilibration) with
              ``tests/data/generators/make_trajectory_fixture.py`` -> ``runs/world_model_study/xtb_qm9_md_32.extxyz``
              (not committed: remade exactly by this command).
``train``     ``zoo-bench run benchmarks/matrices/world_model_study.yaml --only 'pretrain/painn64/world_model/'``
              (``--threads 1 --commit-results``): WorldModel on PaiNN 64 x 3, 3 seeds, split by trajectory
              (24 / 4 / 4 molecules).
``surprise``  ``python -m atomzoo.surprise`` on the 4 held-out test molecules with the 3 checkpoints, a random
              network and the xTB energy jump -> ``docs/world_model/surprise.{csv,md,png}``.
``probes``    ``python -m atomzoo.dynamics_probes`` (linear probes of energy, force norm and a dihedral from the
              embedding, trained on the training molecules, tested on the held-out ones, against random
              networks) -> ``docs/world_model/probes.{csv,md}``.
``predictability`` ``python -m atomzoo.predictability``: closed-form linear predictors of the target frame fitted
              on the training windows, in the world model's embedding, its backbone features, a random twin's
              and the interatomic distances, against the world model's own predictor, each relative to
              "nothing moves" -> ``docs/world_model/predictability.{csv,md}``: is there motion to predict?
``transfer0`` replicate 0 of the ``transfer`` stage below (seed-0 pretraining and its fine-tuning cells), so a
              first transfer answer exists before the ablation runs.
``residual``  the ablation (not in LeWM): the same world model with ``--model.residual true`` (the predictor outputs
              the change of the embedding, starting at "no change"), 3 seeds
              (``benchmarks/matrices/world_model_residual.yaml``), then the same surprise test, probes and
              predictability ->
              ``docs/world_model/residual/``.
``pretrain``  the transfer rows' remaining pretraining cells (denoising and JEPA-SIGReg, seeds 1-2), which the
              ``encoders`` stage needs, before the fine-tuning cells of seeds 1-2.
``encoders``  the surprise test's "nothing moves" distance on the pooled backbone features of the world model and
              of the denoising and JEPA-SIGReg networks of the transfer rows (same frames, same steps, seed k
              with seed k) -> ``docs/world_model/encoders/``: is the world-model objective what makes an encoder
              flag broken geometry, or does any pretraining on the same frames?
``frames1fs`` the same 32 molecules' MD saved every 1 fs (300 frames after the same equilibration; about 20 s a
              molecule) -> ``runs/world_model_study/xtb_qm9_md_32_1fs.extxyz``; the study's world model and the
              difference-fed ablation (``differences`` below) trained on it, 3 seeds each
              (``benchmarks/matrices/world_model_1fs.yaml``, ``configs/data/trajectories_xtb32_1fs.yaml``:
              targets 1, 2, 5 fs ahead), then the same surprise
              test, probes and predictability -> ``docs/world_model/frames_1fs/{lewm,differences}/``: at 5 fs the
              X-H stretches alias and no predictor sees momentum; at 1 fs, does the world model's predictor learn
              the motion?
``transfer``  the rest of the matrix: scratch, denoising and JEPA-SIGReg pretrained on the same frames for the
              same steps, and for the world model's pretraining CPU time (``denoising_eqcpu``,
              ``jepa_sigreg_eqcpu``: steps from ``benchmarks/step_cost.py``), every row fine-tuned on QM9 HOMO
              (1,000 labels) and ethanol energy + forces (50 and 300 frames) ->
              ``benchmarks/results/world_model_study/results.md``. Run before ``differences``:
              the study's answer needs the transfer rows' intervals over seeds more than the 5 fs ablation.
``differences`` the second ablation (not in LeWM): the residual world model with ``--model.predictor_input
              differences`` (the predictor reads the normalised differences of consecutive history embeddings,
              then z_t), 3 seeds (``benchmarks/matrices/world_model_differences.yaml``), then the same surprise
              test, probes and predictability -> ``docs/world_model/differences/``.

    OMP_NUM_THREADS=1 python benchmarks/world_model_study.py all     # one core; data ~30 min, world model
                                                                      # ~15 min a seed, transfer ~2 h a seed

Measured numbers and their reading: docs/world_model.md ("The study").
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "runs/world_model_study/xtb_qm9_md_32.extxyz"
MATRIX = ROOT / "benchmarks/matrices/world_model_study.yaml"
RESIDUAL_MATRIX = ROOT / "benchmarks/matrices/world_model_residual.yaml"
DIFFERENCES_MATRIX = ROOT / "benchmarks/matrices/world_model_differences.yaml"
DATA_CONFIG = ROOT / "configs/data/trajectories_xtb32.yaml"
DATA_1FS = ROOT / "runs/world_model_study/xtb_qm9_md_32_1fs.extxyz"
DATA_CONFIG_1FS = ROOT / "configs/data/trajectories_xtb32_1fs.yaml"
MATRIX_1FS = ROOT / "benchmarks/matrices/world_model_1fs.yaml"
OUT = ROOT / "docs/world_model"
MOLECULES, FRAMES, INTERVAL, EQUILIBRATE = 32, 150, 10, 400
FRAMES_1FS, INTERVAL_1FS = 300, 2   # the frames1fs stage: 300 frames 1 fs apart (MD steps are 0.5 fs)


def chosen_molecules(count: int = MOLECULES, seed: int = 0) -> list[int]:
    """gdb indices of ``count`` QM9 molecules with 5-9 heavy atoms, a seeded choice (sorted)."""
    from atomzoo.datamodules.qm9 import read_qm9pack

    data = read_qm9pack()
    offsets = np.concatenate([[0], np.cumsum(data["counts"])])
    heavy = np.add.reduceat((data["z"] > 1).astype(int), offsets[:-1])
    eligible = np.nonzero((heavy >= 5) & (heavy <= 9))[0]
    picked = sorted(np.random.default_rng(seed).choice(eligible, count, replace=False))
    return [int(data["gdb_index"][i]) for i in picked]


def run(args: list[str]) -> None:
    print("+", " ".join(map(str, args)), flush=True)
    subprocess.run([str(a) for a in args], cwd=ROOT, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def stage_data(out: Path = DATA, frames: int = FRAMES, interval: int = INTERVAL) -> None:
    """The xTB MD of the chosen molecules (same molecules, temperatures, equilibration and seed for every
    frame spacing), written atomically to ``out``."""
    if out.exists():
        print(f"{out} exists")
        return
    tmp = out.with_suffix(".tmp.extxyz")
    run([sys.executable, "tests/data/generators/make_trajectory_fixture.py", "--out", tmp,
         "--gdb", *chosen_molecules(), "--temperatures", "300", "400", "500", "600", "--frames", frames,
         "--interval", interval, "--equilibrate", EQUILIBRATE, "--seed", "0"])
    os.replace(tmp, out)


def checkpoints(matrix_file: Path = MATRIX, objective: str = "world_model") -> list[Path]:
    """The final checkpoints of the finished ``objective`` pretraining cells of ``matrix_file`` (seed order).

    A finished cell whose weights are gone (its run folder is not in this checkout and the matrix keeps
    no ``pretrain.keep`` copy) is run again first (``--rerun``: its rows are replaced; pretraining is
    deterministic on one thread, so an uninterrupted original is reproduced exactly)."""
    sys.path.insert(0, str(ROOT))
    from atomzoo.runner.execute import final_weights
    from atomzoo.runner.matrix import expand, load_matrix
    from atomzoo.runner.results import finished_cells

    matrix = load_matrix(matrix_file)
    done = finished_cells(matrix.results_csv)
    cells = [c for c in expand(matrix) if c.phase == "pretrain" and c.objective == objective and c.id in done]
    for cell in cells:
        if final_weights(matrix, cell) is None:
            print(f"{cell.id}: finished, but its weights are gone: running it again")
            run(["zoo-bench", "run", matrix_file, "--only", f"^{cell.id}$", "--rerun", "--threads", "1",
                 "--commit-results"])
    found = [final_weights(matrix, c) for c in cells]
    if any(f is None for f in found):
        raise SystemExit(f"world_model_study: cells of {matrix_file} have no weights after a rerun; see their log.txt")
    return found


def stage_train() -> None:
    run(["zoo-bench", "run", MATRIX, "--only", "pretrain/painn64/world_model/", "--threads", "1", "--commit-results"])


def stage_transfer_first() -> None:
    """Replicate 0 of the transfer rows (pretraining seed 0 and its fine-tuning cells) before the ablation."""
    run(["zoo-bench", "run", MATRIX, "--only", "/(p0|s0)$", "--threads", "1", "--commit-results"])


def stage_pretrain() -> None:
    """Every pretraining cell of the matrix (the transfer rows' seeds 1-2), which ``encoders`` needs."""
    run(["zoo-bench", "run", MATRIX, "--only", "^pretrain/", "--threads", "1", "--commit-results"])


def stage_transfer() -> None:
    run(["zoo-bench", "run", MATRIX, "--threads", "1", "--commit-results"])


def _or_main(ckpts: list[Path] | None) -> list[Path]:
    """``ckpts``, or the main study's world-model checkpoints when None; an empty list is an error (an
    ablation whose cells are not finished must not be evaluated on the main study's networks)."""
    ckpts = checkpoints() if ckpts is None else ckpts
    if not ckpts:
        raise SystemExit("world_model_study: no finished checkpoints to evaluate")
    return ckpts


def stage_surprise(ckpts: list[Path] | None = None, out: Path = OUT, data: Path = DATA_CONFIG) -> None:
    if (out / "surprise.md").exists():
        print(f"{out / 'surprise.md'} exists")
        return
    run([sys.executable, "-m", "atomzoo.surprise", "--ckpt", *_or_main(ckpts), "--data", data,
         "--split", "test", "--out", out])


def stage_probes(ckpts: list[Path] | None = None, out: Path = OUT, data: Path = DATA_CONFIG) -> None:
    if (out / "probes.md").exists():
        print(f"{out / 'probes.md'} exists")
        return
    run([sys.executable, "-m", "atomzoo.dynamics_probes", "--ckpt", *_or_main(ckpts), "--data", data,
         "--out", out])


def stage_predictability(ckpts: list[Path] | None = None, out: Path = OUT, refit: list[str] = (),
                         data: Path = DATA_CONFIG) -> None:
    if (out / "predictability.md").exists():
        print(f"{out / 'predictability.md'} exists")
        return
    run([sys.executable, "-m", "atomzoo.predictability", "--ckpt", *_or_main(ckpts), "--data", data,
         "--out", out, *refit])


def ablation(matrix_file: Path, objective: str, out: Path, refit: list[str] = (), data: Path = DATA_CONFIG) -> None:
    """Train an ablation matrix's world models, then the surprise test, probes and predictability on them."""
    run(["zoo-bench", "run", matrix_file, "--threads", "1", "--commit-results"])
    if all((out / f"{name}.md").exists() for name in ("surprise", "probes", "predictability")):
        print(f"{out}: surprise, probes and predictability exist")
        return  # (before checkpoints(): it would remake weights a fresh checkout lost, for nothing)
    ckpts = checkpoints(matrix_file, objective)
    stage_surprise(ckpts, out, data)
    stage_probes(ckpts, out, data)
    stage_predictability(ckpts, out, refit, data)


def stage_residual() -> None:
    # the residual predictor also retrained alone on its frozen embedding, at the study's lr and LeWM's
    ablation(RESIDUAL_MATRIX, "world_model_residual", OUT / "residual",
             ["--refit-steps", "1500", "--refit-lr", "5e-4", "5e-5"])


def stage_differences() -> None:
    """The second ablation: the residual world model whose predictor reads the history's differences."""
    ablation(DIFFERENCES_MATRIX, "world_model_differences", OUT / "differences")


def stage_frames1fs() -> None:
    """The same molecules' MD saved every 1 fs (momentum visible in a 3-frame history), the study's world model
    and the difference-fed ablation trained on it (3 seeds each), then the surprise test, probes and
    predictability of each -> ``docs/world_model/frames_1fs/{lewm,differences}/``."""
    stage_data(DATA_1FS, FRAMES_1FS, INTERVAL_1FS)
    for objective, folder in (("world_model", "lewm"), ("world_model_differences", "differences")):
        ablation(MATRIX_1FS, objective, OUT / "frames_1fs" / folder, data=DATA_CONFIG_1FS)


def stage_encoders(out: Path = OUT / "encoders") -> None:
    """The surprise test's "nothing moves" distance on the pooled backbone features of the world model and of
    the denoising and JEPA-SIGReg networks pretrained on the same frames (the transfer rows' pretraining
    cells), seed k with seed k: is the world-model objective what makes an encoder flag broken geometry?"""
    if (out / "surprise.md").exists():
        print(f"{out / 'surprise.md'} exists")
        return
    world, others = checkpoints(), {name: checkpoints(MATRIX, name) for name in ("denoising", "jepa_sigreg")}
    if any(len(c) < len(world) for c in others.values()):
        print(f"encoders: waiting for the transfer stage's pretraining cells ({ {k: len(v) for k, v in others.items()} })")
        return
    run([sys.executable, "-m", "atomzoo.surprise", "--ckpt", *world, "--data", DATA_CONFIG, "--split", "test",
         "--no-xtb", "--out", out,
         "--encoder-ckpt", *(f"{name}={c}" for name, ckpts in others.items() for c in ckpts)])


STAGES = {"data": stage_data, "train": stage_train, "surprise": stage_surprise, "probes": stage_probes,
          "predictability": stage_predictability, "transfer0": stage_transfer_first, "residual": stage_residual, "pretrain": stage_pretrain,
          "encoders": stage_encoders, "frames1fs": stage_frames1fs, "transfer": stage_transfer,
          "differences": stage_differences}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=[*STAGES, "all"])
    stage = parser.parse_args().stage
    for name, fn in STAGES.items():
        if stage in (name, "all"):
            fn()


if __name__ == "__main__":
    main()
