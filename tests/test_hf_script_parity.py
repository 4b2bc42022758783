"""On the one format Hugging Face's old script reads, our .bin equals its output, bit for bit."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.conftest import FIXTURES, TRAX_FIXTURES, invoke


def test_bin_output_matches_the_old_script_key_by_key(tmp_path: Path) -> None:
    fixture = TRAX_FIXTURES / "hf2020_local_axial"
    out = tmp_path / "pytorch_model.bin"
    result = invoke(["convert", fixture / "model.pkl", "--config", fixture / "config.json", "-o", out])
    assert result.exit_code == 0, result.stderr
    ours = torch.load(out, weights_only=True)
    theirs = torch.load(FIXTURES / "hf_script_output" / "hf2020_local_axial.bin", weights_only=True)
    assert ours.keys() == theirs.keys()
    for key in theirs:
        if key == "lm_head.bias":
            continue  # the old script leaves it at zeros; we write the trained bias
        assert ours[key].dtype == theirs[key].dtype, key
        assert torch.equal(ours[key], theirs[key]), key
    assert torch.count_nonzero(theirs["lm_head.bias"]) == 0
    assert torch.equal(ours["lm_head.bias"], ours["lm_head.decoder.bias"])
    assert torch.count_nonzero(ours["lm_head.bias"]) > 0
