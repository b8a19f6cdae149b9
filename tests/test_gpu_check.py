"""The GPU script (benchmarks/gpu_check.py) runs end to end on the CPU (--dry-run), and the GPU
hygiene it relies on holds: no ``.cuda()`` in library code, non-blocking batch copies to CUDA."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.data.data import BaseData

from atomzoo.datamodules import QM9DataModule

ROOT = Path(__file__).resolve().parents[1]


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # minutes on the loaded 2-core VM: three backbones x 6 cells, and three zoo runs (DDP)
def test_dry_run_fills_every_table(cache_dir, tmp_path):
    docs = tmp_path / "performance.md"
    docs.write_text("# Performance\n\nbefore\n")
    report = gpu_check().main(["--dry-run", "--docs", str(docs)])
    cells = {(r["backbone"], r["mode"], r["precision"]): r for r in report["throughput"]}
    assert set(cells) == {(b, m, p) for b in ("schnet", "painn", "et") for m in ("energy", "forces")
                          for p in ("fp32", "tf32", "bf16")}
    for (name, mode, prec), cell in cells.items():
        # every cell has its numbers, or says why not (SchNet's scatter under bf16 autocast: an index_add_ dtype error)
        assert cell.get("molecules_per_s", 0) > 0 or cell["error"], cell
        if prec != "bf16" or name != "schnet":
            assert cell.get("molecules_per_s", 0) > 0, cell
    assert [r["largest_batch"] for r in report["largest_batch"]] == [8, 8, 8]
    assert report["compile"] == []
    assert report["ddp"]["exact"] is True and report["ddp"]["processes"] == 2
    text = docs.read_text()
    assert text.startswith("# Performance\n\nbefore\n") and text.count("<!-- gpu_check: begin -->") == 1
    assert "dry run on the CPU" in text and "| painn | energy + forces |" in text and "**exact**" in text
    assert "| schnet | energy | " in text and "(not run in a dry run)" in text
    gpu_check().write_docs(docs, "<!-- gpu_check: begin -->\nnew\n<!-- gpu_check: end -->")  # a rerun replaces it
    assert docs.read_text().count("<!-- gpu_check: begin -->") == 1 and "\nnew\n" in docs.read_text()


def test_refuses_to_run_without_a_gpu_unless_dry():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit, match="no CUDA device.*--dry-run"):
        gpu_check().main([])


def test_library_code_has_no_cuda_calls():
    """Devices come from Lightning (``.to(device)``, ``type_as``), never a hard-coded ``.cuda()``."""
    offenders = []
    for folder in ("zoo", "backbones", "objectives", "datamodules"):
        for path in (ROOT / folder).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(r"\.cuda\(", line.split("#")[0]):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}")
    assert not offenders, offenders


def test_batches_go_to_cuda_without_blocking(monkeypatch):
    calls = []
    monkeypatch.setattr(BaseData, "to", lambda self, device, **kwargs: calls.append((device, kwargs)) or self)
    batch = Batch.from_data_list([Data(z=torch.tensor([1]), pos=torch.zeros(1, 3))])
    dm = QM9DataModule()
    assert dm.transfer_batch_to_device(batch, torch.device("cuda", 0), 0) is batch
    assert calls == [(torch.device("cuda", 0), {"non_blocking": True})]
    dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)  # CPU: Lightning's own transfer
    assert len(calls) == 2 and calls[1][1].get("non_blocking") is not True
