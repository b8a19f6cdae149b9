"""Write the whole objective state dict of a training checkpoint to a safetensors file (a test fixture).

``tests/data/scd_painn64_qm9_3000steps.safetensors``, the trained SCD model ``tests/test_ssl_fidelity.py``
evaluates, is the ``scd`` pretraining cell of ``benchmarks/matrices/objective_study.yaml`` written with:

    zoo-bench run benchmarks/matrices/objective_study.yaml --only scd
    python tests/data/generators/export_objective_state.py \
        runs/bench/objective_study/pretrain/painn64/scd/c0/run/checkpoints/last.ckpt \
        tests/data/scd_painn64_qm9_3000steps.safetensors

(The committed file was written from the same run when it was made by ``benchmarks/objective_study.py``,
the study's earlier script: ``runs/scd-painn64-n3000-s0/log0/checkpoints/last.ckpt``.)
"""

from __future__ import annotations

import argparse
from pathlib import Path


def export_state(checkpoint: Path, out: Path) -> int:
    """Write the whole objective's state dict (backbone, heads, running noise moments) of a
    checkpoint to ``out`` (safetensors); return the number of values."""
    from safetensors.torch import save_file

    from atomzoo.model_files import read_checkpoint, resolve_class
    from atomzoo.objectives.base import Objective

    cls = resolve_class(read_checkpoint(checkpoint, "export_state").objective)
    if not issubclass(cls, Objective):
        raise TypeError(f"{checkpoint}: {cls.__name__} is not an atomzoo objective; pass a zoo fit checkpoint")
    model = cls.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=False)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out), metadata={"source": f"tests/data/generators/export_objective_state.py, {checkpoint}"})
    return sum(v.numel() for v in state.values())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a zoo fit checkpoint (.ckpt)")
    parser.add_argument("out", type=Path, help="the .safetensors file to write")
    args = parser.parse_args(argv)
    print(f"{export_state(args.checkpoint, args.out)} values -> {args.out}")


if __name__ == "__main__":
    main()
