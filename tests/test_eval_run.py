"""`dsocr eval` end to end with a tiny random model on synthetic pages: the report's numbers are
the metrics of the saved predictions, recomputed independently here."""

from __future__ import annotations

import json

import pytest

from dsocr.cli import main
from dsocr.data.synthetic import SynthConfig, generate_dataset
from oracles import official_model_dir, unlimited_ocr_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = official_model_dir(unlimited_ocr_model(seed=10), tmp_path_factory.mktemp("model"))
    manifest = generate_dataset(tmp_path_factory.mktemp("data"), 2, seed=3, task="free")
    return model, manifest


def _levenshtein(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def test_eval_writes_report_consistent_with_predictions(setup, tmp_path, capsys):
    model, manifest = setup
    out = tmp_path / "report"
    assert main(["eval", "--model", str(model), "--data", str(manifest), "--mode", "tiny",
                 "--max-new-tokens", "8", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    targets = {json.loads(line)["id"]: json.loads(line)["target"] for line in manifest.read_text().splitlines()}
    assert len(predictions) == 2 and (out / "report.png").stat().st_size > 0
    records = {r["id"]: r for r in report["samples"]} if "samples" in report else {r["id"]: r for r in report["records"]}
    for row in predictions:
        record = records[row["id"]]
        assert record["vision_tokens"] == 64 == row["vision_tokens"]  # tiny mode: 64 nominal vision tokens
        target, prediction = targets[row["id"]], row["prediction"]
        assert "<|" not in prediction + target  # no grounding markup to strip here: the strings are scored as they are
        expected = _levenshtein(prediction, target) / max(len(prediction), len(target), 1)
        assert record["edit_distance"] == pytest.approx(expected, abs=1e-9)


def test_eval_errors(setup, tmp_path, capsys):
    model, _ = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"images": ["missing.png"], "prompt": "<image>\\nFree OCR.", "target": "x"}\n')
    assert main(["eval", "--model", str(model), "--data", str(bad), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dsocr eval: error:") and "bad.jsonl" in err
