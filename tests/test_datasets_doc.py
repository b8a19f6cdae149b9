"""docs/datasets.md "Adding a dataset": the example runs exactly as written (issue 13, item 6)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

DOC = Path(__file__).resolve().parents[1] / "docs" / "datasets.md"


def snippets() -> list[str]:
    section = DOC.read_text().split("## Adding a dataset", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_adding_a_dataset_example_runs_as_written(cache_dir):
    blocks = snippets()
    assert len(blocks) == 2
    namespace: dict = {"__name__": "toy_dataset_doc"}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 -- our own documentation
    data, model, trainer = namespace["data"], namespace["model"], namespace["trainer"]
    assert trainer.global_step == 5
    store = data.store
    assert len(store) == 64 and store.meta["label_names"] == ["energy"] and store.meta["atomic_numbers"] == [1]
    assert store.meta["force_unit"] is None and not data.forces
    assert data.splits["train"].size == 48
    labels = np.asarray(store.arrays["labels"][:, 0])
    assert labels.min() >= 0 and abs(labels.max() - 5.0 * (1.2 - 0.74) ** 2) < 1e-9
    assert float(model.std[0]) > 0 and bool(model.stats_ready)
    assert str(store.path).startswith(str(cache_dir))
