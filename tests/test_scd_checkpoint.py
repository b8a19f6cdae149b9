"""SCD's own backbone and checkpoints (issue 28, item 3b): SCDET against the reference code's outputs.

tests/data/scd_et/ (tests/data/generators/make_scd_fixture.py): a tiny ``ConditionalET`` built and run by
the reference code itself (TyJPerez/SelfConditionedDenoisingAtoms, ``models/ET_models/scet.py``) with the
CT settings of ``configs/model_configs/scd.yaml``, saved in their trainer's checkpoint layout
(``scd_ct_tiny.ckpt``), and its outputs on four molecules in float64 (``reference.npz``). No network,
no reference code at test time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from atomzoo import model_files
from atomzoo.backbones.scd_et import SCDET, SCDWeightsMismatch, load_scd_et, scd_et_kwargs
from atomzoo.convert import convert_scd, main

DATA = Path(__file__).resolve().parent / "data" / "scd_et"
CKPT = DATA / "scd_ct_tiny.ckpt"


def reference():
    ref = np.load(DATA / "reference.npz")
    data = Data(z=torch.tensor(ref["z"]), pos=torch.tensor(ref["pos"]), batch=torch.tensor(ref["batch"]))
    data.num_graphs = int(ref["batch"].max()) + 1
    return data, ref


def test_outputs_equal_the_reference_code_to_float64_precision():
    model = load_scd_et(CKPT).double().eval()
    assert isinstance(model, SCDET) and model.inv_post_norm and model.vec_prenorm
    data, ref = reference()
    with torch.no_grad():
        out = model(data)
    # the reference adds 1e-8 to |r_ij| when it normalises edge vectors; atomzoo divides exactly
    np.testing.assert_allclose(out.scalars.numpy(), ref["x"], rtol=0, atol=1e-7)
    np.testing.assert_allclose(out.vectors.numpy(), ref["vec"], rtol=1e-7, atol=1e-6)
    n = len(ref["z"])  # the reference graph has self loops, atomzoo's graph does not
    assert out.graph.edge_index.size(1) + n == ref["edge_index"].shape[1]


def test_every_reference_tensor_is_used_and_unsupported_settings_are_named():
    checkpoint = model_files.load_checkpoint_dict(CKPT)
    state = dict(checkpoint["state_dict"])
    del state["model.rep_model.attention_layers.1.vec_norm.norm_gamma"]
    with pytest.raises(SCDWeightsMismatch, match=r"missing \['vec_norms.1.gamma'\]"):
        load_scd_et({"hyper_parameters": checkpoint["hyper_parameters"], "state_dict": state})
    with pytest.raises(ValueError, match="vec_post_norm=True"):
        scd_et_kwargs({**checkpoint["hyper_parameters"], "vec_post_norm": True})


def test_a_file_that_is_not_an_scd_checkpoint_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["scd", str(tmp_path / "missing.ckpt"), str(tmp_path / "out.safetensors")])
    assert "missing.ckpt does not exist" in capsys.readouterr().err
    with pytest.raises(TypeError, match="SCD checkpoint path"):
        convert_scd(42, tmp_path / "out.safetensors")


def test_the_converted_export_is_a_backbone_for_init_from(tmp_path):
    from atomzoo.objectives import Regression

    main(["scd", str(CKPT), str(tmp_path / "scd-tiny.safetensors"), "--elements", "8", "1", "6", "7"])
    out = tmp_path / "scd-tiny.safetensors"
    assert model_files.read(out).card["elements"] == [1, 6, 7, 8]
    backbone = model_files.build_backbone(out)
    assert isinstance(backbone, SCDET) and backbone.condition_dim == 32
    fine = Regression(SCDET(**model_files.read(out).backbone["init_args"]), targets=["homo"], init_from=str(out))
    data, ref = reference()
    with torch.no_grad():
        x = fine.backbone.double().eval()(data).scalars
    np.testing.assert_allclose(x.numpy(), ref["x"], rtol=0, atol=1e-7)
