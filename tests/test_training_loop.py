"""The training loop on a tiny stage-1 model: it overfits a fixed batch, and a run killed after a
checkpoint and resumed gives the same losses as an uninterrupted one."""

from __future__ import annotations

import pytest
import torch

from dsocr.errors import DsocrError
from dsocr.model.deepseek_ocr import DeepSeekOCRForCausalLM
from dsocr.training import load_config, read_metrics, train
from dsocr.training import trainer as trainer_module
from dsocr.training.checkpoint import checkpoint_dirs
from test_training_support import stage1_values



def test_tiny_stage1_overfits_a_fixed_batch(tmp_path):
    values = stage1_values(tmp_path, n=2, max_steps=40, optim__lr=1e-2)  # 2 samples, batch 2: always the same batch
    config = load_config(values=values)
    train(config)
    records = read_metrics(config.out_dir)
    assert [r["step"] for r in records] == list(range(1, 41))
    assert records[0]["loss"] > 5
    assert records[-1]["loss"] < 0.05, [round(r["loss"], 4) for r in records]
    for key in ("loss", "lm_loss", "aux_loss", "lr", "grad_norm", "tokens_per_s", "samples_per_s"):
        assert key in records[-1]
    assert records[-1]["loss"] == pytest.approx(records[-1]["lm_loss"] + records[-1]["aux_loss"])
    assert 0 < records[-1]["aux_loss"] < 0.01  # alpha 0.001 times a balance loss near 1
    # the final checkpoint is a loadable official-layout model
    (last,) = checkpoint_dirs(config.out_dir)
    assert last.name == "step-00000040"
    loaded = DeepSeekOCRForCausalLM.from_pretrained(last / "model")
    assert loaded.config.language.num_hidden_layers == 2


def resume_values(tmp_path, out):
    return stage1_values(
        tmp_path, n=6, max_steps=5, out_dir=str(out),
        optim__schedule="cosine", optim__warmup_steps=2, optim__grad_accum=2,
        checkpoint__every=2, checkpoint__keep=2,
    )


def test_kill_and_resume_gives_the_uninterrupted_losses(tmp_path, monkeypatch):
    straight = load_config(values=resume_values(tmp_path, tmp_path / "straight"))
    train(straight)
    expected = read_metrics(straight.out_dir)
    assert [c.name for c in checkpoint_dirs(straight.out_dir)] == ["step-00000004", "step-00000005"]  # keep 2

    # the same run, killed just after it logged step 3 (its newest checkpoint is step 2)
    config = load_config(values=resume_values(tmp_path, tmp_path / "killed"))
    real_write = trainer_module.MetricsLog.write

    def write_then_die(self, record):
        real_write(self, record)
        if record["step"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module.MetricsLog, "write", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.undo()
    assert [r["step"] for r in read_metrics(config.out_dir)] == [1, 2, 3]
    with pytest.raises(DsocrError, match="--resume"):
        train(config)  # refuses to start over an existing run

    train(config, resume="latest")
    resumed = read_metrics(config.out_dir)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5]
    for a, b in zip(resumed, expected):
        for key in ("loss", "lm_loss", "aux_loss", "lr", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (a["step"], key)
    # and the final weights agree
    final_a = DeepSeekOCRForCausalLM.from_pretrained(checkpoint_dirs(config.out_dir)[-1] / "model").state_dict()
    final_b = DeepSeekOCRForCausalLM.from_pretrained(checkpoint_dirs(straight.out_dir)[-1] / "model").state_dict()
    for name in final_b:
        torch.testing.assert_close(final_a[name], final_b[name], rtol=1e-6, atol=1e-7)


def test_cli_bf16_checkpointing_left_padding(tmp_path, capsys):
    from dsocr.cli import main
    from test_training_support import write_toml

    values = stage1_values(tmp_path, n=4, max_steps=2, precision="bf16", activation_checkpointing=True,
                           data__padding="left", optim__schedule="step", optim__milestones=[1], optim__gamma=0.5)
    path = write_toml(tmp_path / "train.toml", values)
    assert main(["train", str(path), "--out", str(tmp_path / "cli"), "--set", "logging.every=2"]) == 0
    records = read_metrics(tmp_path / "cli")
    assert [r["step"] for r in records] == [2]  # logged every 2 steps
    assert records[0]["lr"] == pytest.approx(0.5e-3) and records[0]["loss"] == records[0]["loss"]  # finite
    assert "done:" in capsys.readouterr().out
    # --resume on an out dir without checkpoints starts from scratch
    assert main(["train", str(path), "--out", str(tmp_path / "fresh"), "--resume", "--set", "max_steps=1"]) == 0
    assert main(["train", str(path), "--out", str(tmp_path / "cli")]) == 1  # refuses to overwrite a run
    assert "--resume" in capsys.readouterr().err
