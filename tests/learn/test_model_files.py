"""Model files that lie (issue on files that lie): what a file declares is checked before
anything is built from it. Each file is made here, small; each error is one line naming the
file, through the API and the command line (`convkit info`, `convkit apply`), never a
traceback or a large allocation."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import convkit
from convkit.cli.main import cli
from convkit.learn import files as LF
from convkit.learn.model import LearnedFilter, ModelConfig


def _payload(tmp_path: Path) -> tuple[dict, Path]:
    m = LearnedFilter(ModelConfig(arch="linear", kernel=3))
    path = tmp_path / "good.pt"
    LF.save_model(m, path, {"val_psnr": 40.0, "val_ssim": 0.99, "baseline_psnr": 30.0,
                            "baseline_ssim": 0.9},
                  {"mode": "mimic", "chain": "sharpen", "processes": 1})
    return torch.load(path, weights_only=True), path


def _bad(tmp_path: Path, change) -> Path:
    payload, _ = _payload(tmp_path)
    change(payload)
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    return path


def _refused(path: Path, match: str) -> None:
    with pytest.raises(ValueError, match=match) as e:
        convkit.load_model(path)
    msg = str(e.value)
    assert msg.startswith(str(path)) and "\n" not in msg and len(msg) < 400
    for args in (["info", str(path)], ["apply", str(path), str(path.parent / "x.png")]):
        res = CliRunner().invoke(cli, args)
        assert res.exit_code in (1, 2), res.output
        assert "Traceback" not in res.output and str(path) in res.output


@pytest.mark.parametrize("field,value", [("width", 10**6), ("kernel", 100001), ("depth", 10**6),
                                         ("kernel", 0), ("width", "wide")])
def test_config_outside_the_trainable_ranges(tmp_path, field, value):
    def change(p):
        p["config"].update(arch="residual", **{field: value})

    _refused(_bad(tmp_path, change), rf"architecture: {field} should be an integer in \[")


def test_config_that_the_weights_do_not_fit(tmp_path):
    def change(p):
        p["config"]["kernel"] = 63  # within range; the file holds a 3x3

    _refused(_bad(tmp_path, change), r"conv.weight has shape \(1, 1, 3, 3\); the "
                                     r"architecture needs \(1, 1, 63, 63\)")


@pytest.mark.parametrize("make,kind", [
    (lambda t: t.to(torch.complex64), "complex64"),
    (lambda t: t.to_sparse(), "sparse_coo"),
    (lambda t: t.to(torch.int32), "int32"),
])
def test_weights_that_are_not_dense_real_floats(tmp_path, make, kind):
    def change(p):
        p["state_dict"] = {k: make(v) for k, v in p["state_dict"].items()}

    _refused(_bad(tmp_path, change), kind)


def test_deflated_record_that_inflates_is_refused_before_reading(tmp_path):
    _, good = _payload(tmp_path)
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bomb, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)
    _refused(bomb, "is compressed")


def _safetensors(tmp_path: Path, header: dict) -> Path:
    head = json.dumps(header).encode()
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"\0" * 64)
    return path


def test_safetensors_negative_shape(tmp_path):
    path = _safetensors(tmp_path, {"__metadata__": {"format": "convkit.learned"},
                                   "conv.weight": {"dtype": "F32", "shape": [-3, -3],
                                                   "data_offsets": [0, 36]}})
    _refused(path, r"has the shape \[-3, -3\]")


def test_safetensors_metadata_that_is_a_list(tmp_path):
    _refused(_safetensors(tmp_path, {"__metadata__": ["format"]}), "__metadata__ is not a table")


def test_info_describes_odd_records_and_names_them(tmp_path):
    def change(p):
        p["metrics"]["val_psnr"] = "very good"
        del p["metrics"]["baseline_ssim"]
        p["provenance"]["processes"] = "two"

    path = _bad(tmp_path, change)
    res = CliRunner().invoke(cli, ["info", str(path)])
    assert res.exit_code == 0, res.output
    assert "not understood: metrics.val_psnr = 'very good'; provenance.processes = 'two'" \
        in res.output
    convkit.load_model(path)  # the weights are fine: the filter still loads


def test_train_refuses_the_same_ranges():
    res = CliRunner().invoke(cli, ["train", ".", "--mimic", "sharpen", "--width", "2000",
                                   "-o", "x.pt"])
    assert res.exit_code == 2 and "1<=x<=1024" in res.output
