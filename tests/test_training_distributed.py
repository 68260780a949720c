"""Two CPU processes (torchrun, gloo) with half the batch each train exactly like one process with
the whole batch, under DDP and under FSDP2: the same losses step by step and the same weights."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from dsocr.model.deepseek_ocr import DeepSeekOCRForCausalLM
from dsocr.training import build_model, load_config, read_metrics, train
from dsocr.training.checkpoint import checkpoint_dirs
from test_training_support import stage1_values, write_toml


STEPS = 3


def values(tmp_path, mode: str, out: str) -> dict:
    # 8 samples, global batch 4 (2 per process), 2 micro-batches per step: every step is one epoch
    # loss_chunk 4: the answer loss in several recomputed chunks (as long answers are)
    return stage1_values(tmp_path, n=8, max_steps=STEPS, distributed=mode, out_dir=out, loss_chunk=4,
                         data__batch_size=4, optim__grad_accum=2, optim__schedule="cosine", optim__warmup_steps=1,
                         checkpoint__every=2)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The baseline: the same config as one plain process."""
    tmp = tmp_path_factory.mktemp("single")
    config = load_config(values=values(tmp, "ddp", str(tmp / "run")))
    train(config)
    return read_metrics(config.out_dir), checkpoint_dirs(config.out_dir)[-1]


def torchrun(args: list[str]) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "dsocr", "train", *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_two_processes_match_one(tmp_path, single, mode):
    expected, expected_checkpoint = single
    out = tmp_path / "run"
    config_path = write_toml(tmp_path / "train.toml", values(tmp_path, mode, "unused"))
    torchrun([str(config_path), "--out", str(out)])

    records = read_metrics(out)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for a, b in zip(records, expected):
        assert a["answer_tokens"] == b["answer_tokens"]
        for key in ("loss", "lm_loss", "aux_loss", "lr", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (mode, a["step"], key)
    # the checkpoint holds the full (gathered) model: per tensor, its distance to the single-process
    # weights is a small fraction of how far training moved them (Adam turns float-level noise in
    # near-zero gradients into update-sized noise, so elementwise tolerances would be arbitrary)
    initial = build_model(load_config(values=values(tmp_path, mode, "unused")).model, seed=0).state_dict()
    got = DeepSeekOCRForCausalLM.from_pretrained(checkpoint_dirs(out)[-1] / "model").state_dict()
    want = DeepSeekOCRForCausalLM.from_pretrained(expected_checkpoint / "model").state_dict()
    assert got.keys() == want.keys()
    for name in want:
        moved = (want[name] - initial[name]).norm()
        assert (got[name] - want[name]).norm() <= 0.01 * moved + 1e-7, name


def test_single_process_checkpoint_resumes_under_fsdp2(tmp_path, single):
    """Checkpoints hold full states keyed by name: one process's step-2 checkpoint continues on two
    FSDP2 processes with the uninterrupted run's losses."""
    expected, last = single
    run = tmp_path / "run"
    shutil.copytree(last.parent.parent, run)
    shutil.rmtree(run / "checkpoints" / last.name)  # back to step 2
    config_path = write_toml(tmp_path / "train.toml", values(tmp_path, "fsdp2", "unused"))
    torchrun([str(config_path), "--out", str(run), "--resume"])
    records = read_metrics(run)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for a, b in zip(records, expected):
        for key in ("loss", "lm_loss", "aux_loss", "lr", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (a["step"], key)
