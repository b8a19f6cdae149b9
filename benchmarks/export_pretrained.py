"""Ship the benchmark's pretrained backbones as named models (issue 28, item 2).

    python benchmarks/export_pretrained.py [--runs runs/bench/objectives_v2] \\
        [--results benchmarks/results/objectives_v2/results.csv] [--out zoo/models] [--cells REGEX] [--best] \\
        [--finetuned [REGEX]]

For every FINISHED pretraining cell of the objectives benchmark (``<runs>/pretrain/<backbone>/
<objective>/c<k>/p<seed>/DONE.json``, or its ``pretrain.keep`` copy ``<results folder>/pretrained/<cell>.ckpt``
in a checkout without the run folders) that ``--cells`` selects (default :data:`SHIPPED`: the clean
runs of the four objectives on PaiNN and SchNet; ``--best`` keeps, of the seeds of one objective, the
one whose fine-tuning reached the lowest validation MAE, never chosen by a test number) it writes, with :func:`atomzoo.export.export_backbone`, the
backbone-only export ``<out>/<backbone>-<objective>-qm9[-c<k>]-p<seed>.safetensors`` and its model card
(backbone weights only: the pretraining heads are not needed to fine-tune). The checkpoint exported is
the one the benchmark's fine-tuning cells started from (their ``--model.init_from``; ``last.ckpt``
when no fine-tuning cell finished yet). The card gets a ``name``, a ``description`` and a
``benchmark`` entry read from the results file: the commit and the exact command of the pretraining
run and, for every finished fine-tuning cell that started from it, its test MAE, the matching
from-scratch cell's number and the fine-tuning command. ``--finetuned`` also exports the fine-tuned
models of those cells that its pattern selects (default :data:`SHIPPED_FINETUNED`) in full (heads and normalisation included, for ``atomzoo.load(name)``) as
``<name>-<target>-n<labels>-s<seed>``. Files that exist with the same source are rewritten (the
cards' numbers follow the results file).

Run it again whenever more cells have finished; ``zoo models`` then lists the new models.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shlex
import sys
from collections import defaultdict
from pathlib import Path

from atomzoo.cards import card_path, read_card
from atomzoo.export import export_backbone, export_model
from atomzoo.runner.execute import KEPT_SUBDIR

ROOT = Path(__file__).resolve().parents[1]


def _cells(results: Path) -> dict[str, dict]:
    """``{cell: {"rows": {metric: value}, "command", "commit", fields...}}`` of the results file."""
    cells: dict[str, dict] = defaultdict(lambda: {"metrics": {}, "command": None, "commit": None})
    with open(results, newline="") as handle:
        for row in csv.DictReader(handle):
            cell = cells[row["cell"]]
            cell.update({k: row[k] for k in ("phase", "backbone", "objective", "target", "label_budget", "mode",
                                             "seed", "pretrain_seed")})  # fmt: skip
            if not row["step"]:
                cell["metrics"][row["metric"]] = float(row["value"])
            elif row["metric"].startswith("curve:val/") and row["metric"].endswith("_mae_meV"):
                best = cell.setdefault("best_val", {})
                best[row["metric"][6:]] = min(float(row["value"]), best.get(row["metric"][6:], float("inf")))
            cell["command"] = row["command"] or cell["command"]
            cell["commit"] = row["commit"] or cell["commit"]
    return dict(cells)


def _init_from(command: str) -> str | None:
    words = shlex.split(command or "")
    for k, word in enumerate(words):
        if word in ("--model.init_from", "--model.init_args.init_from") and k + 1 < len(words):
            return words[k + 1]
        if word.startswith(("--model.init_from=", "--model.init_args.init_from=")):
            return word.split("=", 1)[1]
    return None


def _test_metric(metrics: dict) -> tuple[str, float] | None:
    for key, value in metrics.items():
        if key.startswith("test/") and key.endswith("_mae_meV"):
            return key, value
    return None


def model_name(pretrain_cell: str, data: str = "qm9") -> str:
    """``pretrain/painn64/denoising/c0/p0`` -> ``painn64-denoising-qm9-p0`` (``-c<k>`` when k is not 0)."""
    _, backbone, objective, corruption, seed = pretrain_cell.split("/")
    return "-".join([backbone, objective, data, *([corruption] if corruption != "c0" else []), seed])


def benchmark_entry(pretrain_cell: str, cells: dict[str, dict], results: Path) -> tuple[dict, list[dict]]:
    """The card's ``benchmark`` entry of a pretraining cell, and the fine-tuning cells that started from it."""
    pre = cells[pretrain_cell]
    finetunes = []
    for cell, info in sorted(cells.items()):
        if not cell.startswith(pretrain_cell.replace("pretrain/", "finetune/", 1) + "/"):
            continue
        metric = _test_metric(info["metrics"])
        if metric is None:
            continue  # not finished
        scratch_cell = re.sub(r"^finetune/([^/]+)/[^/]+/(c[^/]+)/p[^/]+/", r"finetune/\1/none/\2/", cell)
        scratch = _test_metric(cells.get(scratch_cell, {}).get("metrics", {}))
        finetunes.append({
            "cell": cell, "target": info["target"], "label_budget": int(info["label_budget"]), "mode": info["mode"],
            "seed": int(info["seed"]), "metric": metric[0], "value": metric[1], "commit": info["commit"],
            "command": info["command"], "init_from": _init_from(info["command"]),
            "scratch_cell": scratch_cell if scratch else None, "scratch_value": scratch[1] if scratch else None,
        })  # fmt: skip
    entry = {
        "results": str(results.relative_to(ROOT)) if results.is_relative_to(ROOT) else str(results),
        "pretrain_cell": pretrain_cell, "pretrain_commit": pre["commit"], "pretrain_command": pre["command"],
        "pretrain_wall_s": pre["metrics"].get("wall_s"), "finetune": finetunes,
    }  # fmt: skip
    return entry, finetunes


#: card entries that change on every export although the model did not
_VOLATILE = ("created_utc", "versions")


def _add_to_card(weights: Path, fields: dict, previous: str | None = None) -> None:
    """Add ``fields`` to the card just written; keep the ``previous`` card text when nothing but
    :data:`_VOLATILE` entries differ (same weights, same numbers: no change to commit)."""
    card = read_card(weights)
    card.update(fields)
    text = json.dumps(card, indent=2, default=str) + "\n"
    if previous is not None:
        old = json.loads(previous)
        if {k: v for k, v in old.items() if k not in _VOLATILE} == {k: v for k, v in json.loads(text).items()
                                                                    if k not in _VOLATILE}:  # fmt: skip
            text = previous
    card_path(weights).write_text(text)


def _previous_card(weights: Path) -> str | None:
    return card_path(weights).read_text() if card_path(weights).is_file() else None


#: the pretraining cells shipped by default: the clean (c0) runs of the four objectives on PaiNN and SchNet
#: (ET and the noise study's corrupted runs go through ``$ATOMZOO_MODELS``, not the package)
SHIPPED = r"^pretrain/(painn64|schnet64)/(denoising|scd|jepa_ema|jepa_sigreg)/c0/p\d+$"
#: the fine-tuned full models shipped by default (``--finetuned`` without a pattern)
SHIPPED_FINETUNED = r"^finetune/painn64/denoising/c0/p\d+/homo/n1000/finetune/s\d+$"


def best_validation(pretrain_cell: str, cells: dict[str, dict]) -> float | None:
    """The lowest validation MAE (meV) any finished fine-tuning cell reached from ``pretrain_cell``'s model,
    on the first of their tasks in sorted order (the number early stopping selected on; never a test number).
    ``None`` when none finished."""
    prefix = pretrain_cell.replace("pretrain/", "finetune/", 1) + "/"
    for cell in sorted(c for c in cells if c.startswith(prefix)):
        if _test_metric(cells[cell]["metrics"]) and cells[cell].get("best_val"):
            return min(cells[cell]["best_val"].values())
    return None


def select_cells(finished: list[str], cells: dict[str, dict], pattern: str = SHIPPED, best: bool = False) -> list[str]:
    """The finished pretraining cells matching ``pattern``; with ``best``, of the cells that differ only in the
    pretraining seed, the one whose fine-tuning reached the lowest validation MAE (:func:`best_validation`;
    all of them while none of their fine-tunings has finished)."""
    chosen = [c for c in finished if re.search(pattern, c)]
    if not best:
        return chosen
    groups: dict[str, list[str]] = defaultdict(list)
    for cell in chosen:
        groups[cell.rsplit("/", 1)[0]].append(cell)
    kept = []
    for members in groups.values():
        scored = [(best_validation(c, cells), c) for c in members]
        ranked = sorted((v, c) for v, c in scored if v is not None)
        kept.extend([ranked[0][1]] if ranked else members)
    return sorted(kept)


def export_all(runs: Path, results: Path, out: Path, finetuned: str | None = None, pattern: str = SHIPPED,
               best: bool = False) -> list[Path]:
    """Export the finished pretraining cells under ``runs`` that match ``pattern`` (:func:`select_cells`) into
    ``out``, and with ``finetuned`` (a pattern of fine-tuning cells) their matching fine-tuned models in full;
    returns the weights written."""
    cells = _cells(results)
    written = []
    kept_dir = results.parent / KEPT_SUBDIR  # the matrix's pretrain.keep copies (a fresh checkout has no runs/)
    finished = sorted({"pretrain/" + str(done.parent.relative_to(runs / "pretrain"))
                       for done in (runs / "pretrain").glob("*/*/*/*/DONE.json")}
                      | {str(kept.relative_to(kept_dir).with_suffix("")) for kept in kept_dir.glob("pretrain/*/*/*/*.ckpt")})
    for cell in select_cells(finished, cells, pattern, best):
        cell_dir = runs / cell.replace("pretrain/", "", 1)
        if cell not in cells:
            print(f"skip {cell}: not in {results}", file=sys.stderr)
            continue
        entry, finetunes = benchmark_entry(cell, cells, results)
        sources = {f["init_from"] for f in finetunes if f["init_from"]}
        checkpoint = Path(sources.pop()) if len(sources) == 1 else cell_dir / "run" / "checkpoints" / "last.ckpt"
        if not checkpoint.is_absolute():
            checkpoint = ROOT / checkpoint
        if not checkpoint.is_file() and (kept_dir / f"{cell}.ckpt").is_file():
            checkpoint = kept_dir / f"{cell}.ckpt"  # the same weights, without the optimiser state
        name = model_name(cell)
        weights = out / f"{name}.safetensors"
        previous = _previous_card(weights)
        export_backbone(checkpoint, weights)
        objective = cells[cell]["objective"]
        _add_to_card(weights, previous=previous, fields={
            "name": name, "benchmark": entry, "source_checkpoint": _relative(checkpoint),
            "description": f"{cells[cell]['backbone']} backbone pretrained with {objective} on QM9 structures "
                           f"(no labels), seed {cells[cell]['pretrain_seed']}, objectives benchmark (issue 26); "
                           "fine-tune it with zoo fit ... --model.init_from " + name,
        })  # fmt: skip
        written.append(weights)
        if finetuned:
            for row in [r for r in finetunes if re.search(finetuned, r["cell"])]:
                run = ROOT / _default_root(row["command"]) / "run" / "checkpoints"
                target = f"{name}-{row['target']}-n{row['label_budget']}-s{row['seed']}"
                full = out / f"{target}.safetensors"
                source = _best(run) or run / "last.ckpt"
                previous = _previous_card(full)
                export_model(source, full)
                _add_to_card(full, previous=previous, fields={"name": target, "benchmark": {**entry, "finetune": [row]},
                                    "source_checkpoint": _relative(source),
                                    "description": f"{name} fine-tuned on {row['label_budget']} QM9 {row['target']} "
                                                   f"labels (seed {row['seed']}); atomzoo.load('{target}')"})  # fmt: skip
                written.append(full)
    return written


def _relative(path: Path) -> str:
    """``path`` relative to the repository (cards name files as the benchmark's commands do)."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _default_root(command: str) -> str:
    words = shlex.split(command or "")
    return next(words[k + 1] for k, w in enumerate(words) if w == "--trainer.default_root_dir")


def _best(checkpoints: Path) -> Path | None:
    """The checkpoint ``--test_after_fit`` tested (the best by val/loss)."""
    best = sorted(checkpoints.glob("best-*.ckpt"))
    return best[-1] if len(best) == 1 else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs/bench/objectives_v2")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks/results/objectives_v2/results.csv")
    parser.add_argument("--out", type=Path, default=ROOT / "zoo/models")
    parser.add_argument("--cells", default=SHIPPED, help=f"regular expression of the pretraining cells to export "
                        f"(default: {SHIPPED})")
    parser.add_argument("--best", action="store_true", help="of the cells that differ only in the pretraining seed, "
                        "only the one whose fine-tuning reached the lowest validation MAE")
    parser.add_argument("--finetuned", nargs="?", const=SHIPPED_FINETUNED, default=None, metavar="REGEX",
                        help="also export the fine-tuned full models of these fine-tuning cells "
                             f"(default pattern: {SHIPPED_FINETUNED})")
    args = parser.parse_args(argv)
    written = export_all(args.runs.resolve(), args.results.resolve(), args.out, args.finetuned, args.cells, args.best)
    total = sum(p.stat().st_size + card_path(p).stat().st_size for p in written)
    for weights in written:
        print(f"wrote {weights} ({weights.stat().st_size / 1e6:.2f} MB) and {card_path(weights).name}")
    print(f"{len(written)} models, {total / 1e6:.2f} MB in all (weights + cards)")


if __name__ == "__main__":
    main()
