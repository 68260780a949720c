"""dsocr.evaluation: metrics against hand-computed values and independent implementations,
the Fox and OmniDocBench loaders on their fixtures, and the report files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dsocr.data import SynthConfig, read_manifest, render_page, write_manifest
from dsocr.errors import DsocrError
from dsocr.evaluation.benchmarks import load_fox, load_omnidocbench
from dsocr.evaluation.metrics import (
    RAW,
    EvalRecord,
    Normalization,
    aggregate_by_bucket,
    bucket_bounds,
    cer,
    compression_ratio,
    count_text_tokens,
    edit_distance,
    evaluate,
    evaluate_pair,
    fox_precision,
    fox_scores,
    fox_words,
    nominal_vision_tokens,
    normalize_text,
    normalized_edit_distance,
    summarize,
    valid_vision_tokens,
    wer,
)
from dsocr.evaluation.report import (
    PAPER_FOX_TABLE2,
    format_table,
    report_dict,
    write_report,
)

FIXTURES = Path(__file__).parent / "fixtures"


# ---------------------------------------------------------------------------------------------
# Independent reference implementations
# ---------------------------------------------------------------------------------------------


def levenshtein_dp(a, b) -> int:
    """Textbook Wagner-Fischer dynamic programme (what nltk.edit_distance computes)."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def fox_cal_per_metrics(pred: str, gt: str) -> dict:
    """Fox's `cal_per_metrics(root, pred, gt)` restated with nltk's set definitions; Fox calls
    it as `cal_per_metrics(root, ann["label"], ann["answer"])`."""
    reference, hypothesis = set(gt.split()), set(pred.split())
    common = len(reference & hypothesis)
    precision = common / len(hypothesis)  # nltk.metrics.precision(reference, test)
    recall = common / len(reference)  # nltk.metrics.recall(reference, test)
    return {"precision": precision, "recall": recall,
            "edit_dist": levenshtein_dp(pred, gt) / max(len(pred), len(gt))}


# ---------------------------------------------------------------------------------------------
# Edit distances
# ---------------------------------------------------------------------------------------------


def test_edit_distances_by_hand():
    assert edit_distance("kitten", "sitting") == 3
    assert normalized_edit_distance("kitten", "sitting") == pytest.approx(3 / 7)
    assert normalized_edit_distance("", "") == 0.0
    assert normalized_edit_distance("abc", "") == 1.0
    assert cer("abd", "abc") == pytest.approx(1 / 3)
    assert cer("abcdef", "abc") == pytest.approx(1.0)  # three insertions over three characters
    assert cer("", "") == 0.0 and cer("x", "") == 1.0
    assert wer("a x c d", "a b c") == pytest.approx(2 / 3)  # one substitution, one insertion
    assert wer("the  cat\nsat", "the cat sat") == 0.0
    assert wer("", "") == 0.0 and wer("a", "") == 1.0
    assert edit_distance(["the", "cat"], ["a", "cat"]) == 1


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="abcd é\n", max_size=25), st.text(alphabet="abcd é\n", max_size=25))
def test_edit_distance_matches_dynamic_programme(a, b):
    expected = levenshtein_dp(a, b)
    assert edit_distance(a, b) == expected
    longest = max(len(a), len(b))
    assert normalized_edit_distance(a, b) == pytest.approx(expected / longest if longest else 0.0)
    assert 0.0 <= normalized_edit_distance(a, b) <= 1.0
    assert normalized_edit_distance(a, b) == normalized_edit_distance(b, a)
    if b:
        assert cer(a, b) == pytest.approx(expected / len(b))
    if b.split():
        assert wer(a, b) == pytest.approx(levenshtein_dp(a.split(), b.split()) / len(b.split()))


# ---------------------------------------------------------------------------------------------
# Fox precision
# ---------------------------------------------------------------------------------------------


def test_fox_scores_by_hand():
    truth = "the cat sat on the mat"  # distinct words: the cat sat on mat (5)
    output = "the cat sat sat"  # distinct words: the cat sat (3)
    scores = fox_scores(output, truth)
    assert scores.precision == pytest.approx(3 / 5)  # distinct truth words found in the output
    assert scores.recall == pytest.approx(3 / 3)  # distinct output words found in the truth
    assert scores.f_measure == pytest.approx(2 * 0.6 * 1.0 / 1.6)
    assert scores.edit_distance == pytest.approx(levenshtein_dp(output, truth) / len(truth))
    assert fox_precision(output, truth) == scores.precision
    # A hallucinated word lowers Fox's recall, not its precision.
    noisy = fox_scores("the cat sat on the mat banana", truth)
    assert noisy.precision == 1.0 and noisy.recall == pytest.approx(5 / 6)
    # Word order and repetitions do not count.
    assert fox_scores("mat the on sat cat", truth).precision == 1.0
    # Empty texts: 1 when both are empty, 0 otherwise; no division by zero.
    assert fox_scores("  ", "\n").precision == 1.0  # no words on either side
    assert fox_scores("", "").precision == 1.0 and fox_scores("", "").edit_distance == 0.0
    assert fox_scores("", "word").precision == 0.0 and fox_scores("word", "").precision == 0.0
    assert fox_scores("x", "y").f_measure == 0.0


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from("alpha beta gamma delta eps zeta eta".split()), min_size=1, max_size=12),
       st.lists(st.sampled_from("alpha beta gamma delta eps theta iota".split()), min_size=1, max_size=12))
def test_fox_scores_match_the_fox_tool(output_words, truth_words):
    output, truth = " ".join(output_words), " ".join(truth_words)
    # Fox's tool: cal_per_metrics(root, pred=label (truth), gt=answer (model output)).
    expected = fox_cal_per_metrics(truth, output)
    scores = fox_scores(output, truth)
    assert scores.precision == pytest.approx(expected["precision"])
    assert scores.recall == pytest.approx(expected["recall"])
    assert scores.edit_distance == pytest.approx(expected["edit_dist"])


def test_fox_words_cjk():
    assert fox_words("a b", "c  d") == (["a", "b"], ["c", "d"])
    segmenter = lambda text: list(text.replace(" ", ""))  # noqa: E731
    assert fox_words("你好 ab", "ab", segmenter=segmenter) == (["你", "好", "a", "b"], ["a", "b"])
    pairs = lambda t: [t[i:i + 2] for i in range(0, len(t), 2)]  # noqa: E731
    assert fox_scores("你好世界", "你好", segmenter=pairs).precision == 1.0


# ---------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------

GROUNDED = ("<|ref|>title<|/ref|><|det|>[[10, 20, 500, 60]]<|/det|>\n# A **Bold** Title\n\n"
            "<|ref|>text<|/ref|><|det|>[[10, 80, 990, 200]]<|/det|>\nSome  text here.\n\n"
            "<|ref|>list<|/ref|><|det|>[[10, 210, 990, 300]]<|/det|>\n- first item\n2. second item\n\n"
            "<|ref|>table<|/ref|><|det|>[[10, 310, 600, 400]]<|/det|>\n"
            "<table><tr><td>a</td><td>b</td></tr><tr><td>1</td><td>2</td></tr></table>\n\n"
            "<|ref|>image<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>\n![](images/0.jpg)\n\\[x^2\\]<｜end▁of▁sentence｜>")


def test_normalisation():
    stripped = normalize_text(GROUNDED)
    assert "<|" not in stripped and "end▁of▁sentence" not in stripped
    assert stripped.startswith("# A **Bold** Title\n\nSome  text here.")
    assert normalize_text(GROUNDED, strip_markdown=True) == (
        "A Bold Title\n\nSome text here.\n\nfirst item\nsecond item\n\na b\n1 2\n\nx^2")
    assert normalize_text(GROUNDED, strip_markdown=True, collapse_whitespace=True, lowercase=True) == (
        "a bold title some text here. first item second item a b 1 2 x^2")
    assert RAW(GROUNDED) == GROUNDED
    assert Normalization(collapse_whitespace=True)(" a \n\t b ") == "a b"


# ---------------------------------------------------------------------------------------------
# Tokens, compression, records, buckets
# ---------------------------------------------------------------------------------------------


def test_vision_tokens_and_compression():
    assert [nominal_vision_tokens(m) for m in ("tiny", "small", "base", "large")] == [64, 100, 256, 400]
    assert nominal_vision_tokens("gundam", (2, 3)) == 6 * 100 + 256
    assert nominal_vision_tokens("gundam", (1, 1)) == 256
    assert nominal_vision_tokens("gundam-m", (2, 1)) == 2 * 256 + 400
    assert valid_vision_tokens(256, 1000, 1000) == 256
    assert valid_vision_tokens(256, 1200, 1684) == 183  # ceil(256 * 1200 / 1684)
    assert compression_ratio(640, 64) == 10.0
    with pytest.raises(DsocrError):
        compression_ratio(1, 0)


def test_count_text_tokens_uses_deepseek_tokenizer():
    # Spec §6 test vector: "Convert the document to markdown. " -> 8 ids.
    assert count_text_tokens("Convert the document to markdown. ") == 8
    assert count_text_tokens("") == 0


def record(tokens: int, precision: float, vision: int = 100) -> EvalRecord:
    return EvalRecord(id=str(tokens), text_tokens=tokens, vision_tokens=vision, compression=tokens / vision,
                      precision=precision, recall=1.0, f_measure=0.5, edit_distance=1 - precision, cer=0.1,
                      wer=0.2, prediction_chars=10, reference_chars=10)


def test_buckets_by_hand():
    assert bucket_bounds(650) == (600, 700) and bucket_bounds(700) == (700, 800) and bucket_bounds(99) == (0, 100)
    records = [record(650, 0.9), record(699, 0.7), record(700, 1.0), record(1250, 0.5)]
    buckets = aggregate_by_bucket(records)
    assert [(b.label, b.count) for b in buckets] == [("600-700", 2), ("700-800", 1), ("1200-1300", 1)]
    assert buckets[0].means["precision"] == pytest.approx(0.8)
    assert buckets[0].means["compression"] == pytest.approx((6.5 + 6.99) / 2)
    assert buckets[0].means["edit_distance"] == pytest.approx(0.2)
    overall = summarize(records)
    assert (overall.low, overall.high, overall.count) == (650, 1250, 4)
    assert overall.means["precision"] == pytest.approx(0.775)
    assert [b.label for b in aggregate_by_bucket(records, width=500)] == ["500-1000", "1000-1500"]
    assert summarize([]) is None


def test_evaluate_pairs():
    truth = "<|ref|>text<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>\nthe cat sat on the mat"
    exact = evaluate_pair(truth, truth, 64, id="p", text_tokens=640)
    assert (exact.precision, exact.recall, exact.edit_distance, exact.cer, exact.wer) == (1.0, 1.0, 0.0, 0.0, 0.0)
    assert exact.compression == 10.0 and exact.reference_chars == len("the cat sat on the mat")
    records = evaluate(["the cat", "the cat sat on the mat"], [truth, truth], [64, 100], ids=["a", "b"])
    assert records[0].precision == pytest.approx(2 / 5) and records[1].precision == 1.0
    tokens = count_text_tokens("the cat sat on the mat")
    assert [r.text_tokens for r in records] == [tokens, tokens]
    assert records[1].compression == pytest.approx(tokens / 100)
    with pytest.raises(DsocrError, match="predictions"):
        evaluate(["a"], ["a", "b"], 64)


def test_perfect_ocr_of_synthetic_pages_scores_perfectly():
    pages = [render_page(seed, SynthConfig(width=300, height=400)) for seed in range(3)]
    truths = [page.plain_text() for page in pages]
    records = evaluate(truths, truths, 64)
    assert all(r.precision == 1.0 and r.edit_distance == 0.0 for r in records)
    grounded = [page.markdown() for page in pages]
    normalization = Normalization(strip_markdown=True, collapse_whitespace=True)
    records = evaluate(grounded, truths, 64, normalization=normalization)
    assert all(r.precision == 1.0 and r.edit_distance == 0.0 for r in records)


# ---------------------------------------------------------------------------------------------
# Benchmark loaders
# ---------------------------------------------------------------------------------------------


def test_fox_fixture_loads():
    annotation = FIXTURES / "fox" / "en_page_ocr.json"
    raw = json.loads(annotation.read_text(encoding="utf-8"))
    samples = load_fox(annotation)
    assert [s.id for s in samples] == ["en_1", "en_2", "en_3"]
    for sample, entry in zip(samples, raw):
        assert sample.prompt == "<image>\nFree OCR."
        assert sample.target == entry["conversations"][1]["value"]
        assert sample.images == [FIXTURES / "fox" / "en_pdf_png" / entry["image"]]
    assert samples[0].meta == {"source": "fox", "file": "en_page_ocr.json", "index": 0, "len": raw[0]["len"]}
    own = load_fox(annotation, prompt=None)
    assert own[0].prompt == raw[0]["conversations"][0]["value"]
    image = samples[1].load_images().images[0]
    assert image.size == (240, 320) and image.mode == "RGB"


def test_fox_errors(tmp_path):
    path = tmp_path / "en_page_ocr.json"
    path.write_text(json.dumps([{"image": "x.png", "conversations": [{"from": "human", "value": "q"}]}]))
    with pytest.raises(DsocrError, match=r"entry 0: 'conversations' must hold a question and an answer"):
        load_fox(path)
    path.write_text(json.dumps([{"image": "x.png", "conversations": [{"value": "q"}, {"value": "a"}]}]))
    with pytest.raises(DsocrError, match="entry 0: image file not found"):
        load_fox(path)
    assert load_fox(path, check_files=False)[0].target == "a"
    path.write_text("{")
    with pytest.raises(DsocrError, match="not valid JSON"):
        load_fox(path)
    path.write_text(json.dumps({"image": "x"}))
    with pytest.raises(DsocrError, match="expected a JSON list"):
        load_fox(path)


TAG = re.compile(r"<\|ref\|>(\w+)<\|/ref\|><\|det\|>\[\[(\d+), (\d+), (\d+), (\d+)\]\]<\|/det\|>")


def test_omnidocbench_fixture_loads():
    annotation = FIXTURES / "omnidocbench" / "OmniDocBench.json"
    raw = json.loads(annotation.read_text(encoding="utf-8"))
    samples = load_omnidocbench(annotation)
    assert len(samples) == 2
    first = samples[0]
    assert first.id == Path(raw[0]["page_info"]["image_path"]).stem
    assert first.prompt == "<image>\n<|grounding|>Convert the document to markdown."
    assert first.images == [FIXTURES / "omnidocbench" / "images" / raw[0]["page_info"]["image_path"]]
    labels = [m.group(1) for m in TAG.finditer(first.target)]
    # sorted by `order`; the header (page furniture) and the ignored block are left out
    assert labels[0] == "title" and labels[-2:] == ["equation", "image"]
    assert "header" not in labels and "Running header" not in first.target and "ignored text" not in first.target
    kept = [d for d in raw[0]["layout_dets"] if not d["ignore"] and d["category_type"] != "header"]
    assert len(labels) == len(kept) == len(first.boxes)
    for match in TAG.finditer(first.target):
        assert all(0 <= int(v) <= 999 for v in match.groups()[1:])
    assert first.target.startswith("<|ref|>title<|/ref|><|det|>[[")
    assert "\n# " in first.target and "\\[E = m c^{2}\\]" in first.target
    assert first.target.endswith("<|ref|>image<|/ref|><|det|>[[624, 780, 958, 921]]<|/det|>")
    tables = [d for d in raw[0]["layout_dets"] if d["category_type"] == "table"]
    for table in tables:
        assert table["html"] in first.target
    title = min((d for d in kept), key=lambda d: d["order"])
    x1, y1 = title["poly"][0], title["poly"][1]
    assert first.boxes[0].box[:2] == (x1, y1)

    plain = load_omnidocbench(annotation, grounded=False)
    assert "<|ref|>" not in plain[0].target and plain[0].target.startswith("# ")
    assert plain[0].target == "\n\n".join(b.text for b in plain[0].boxes)
    english = load_omnidocbench(annotation, languages={"en"})
    assert [s.id for s in english] == [first.id]
    assert english[0].meta["page_attribute"]["language"] == "en"


def test_omnidocbench_errors(tmp_path):
    path = tmp_path / "OmniDocBench.json"
    page = {"layout_dets": [{"category_type": "text_block", "poly": [1, 2, 3], "text": "x", "order": 0}],
            "page_info": {"image_path": "a.jpg", "width": 10, "height": 10}}
    path.write_text(json.dumps([page]))
    with pytest.raises(DsocrError, match=r"page 0 \(a.jpg\): layout_dets\[0\]: 'poly' must be"):
        load_omnidocbench(path, check_files=False)
    page["page_info"]["width"] = 0
    path.write_text(json.dumps([page]))
    with pytest.raises(DsocrError, match="width and .height must be positive"):
        load_omnidocbench(path, check_files=False)


def test_benchmark_samples_round_trip_through_a_manifest(tmp_path):
    samples = load_fox(FIXTURES / "fox" / "en_page_ocr.json") + \
        load_omnidocbench(FIXTURES / "omnidocbench" / "OmniDocBench.json")
    path = write_manifest(tmp_path / "bench.jsonl", samples)
    assert read_manifest(path) == samples


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------


def paper_like_records() -> list[EvalRecord]:
    records = []
    for low, _, tiny_precision, _, small_precision, _, pages in PAPER_FOX_TABLE2:
        for k in range(min(pages, 4)):
            records.append(record(low + 10 + 20 * k, tiny_precision / 100 - 0.01 * k, vision=64))
    return records


def test_report_files(tmp_path):
    records = paper_like_records()
    paths = write_report(tmp_path / "out", records, title="Tiny on fixtures", mode="tiny")
    table = paths["table"].read_text()
    assert table.startswith("Tiny on fixtures\n")
    for label in ("600-700", "1200-1300", "all"):
        assert re.search(rf"^{label}\s", table, re.MULTILINE)

    data = json.loads(paths["json"].read_text())
    assert data["title"] == "Tiny on fixtures" and data["mode"] == "tiny" and data["bucket_width"] == 100
    assert len(data["records"]) == len(records) and data["records"][0]["id"] == records[0].id
    assert [b["bucket"] for b in data["buckets"]] == [f"{row[0]}-{row[1]}" for row in PAPER_FOX_TABLE2]
    assert data["summary"]["count"] == len(records) and data["summary"]["bucket"] == "all"
    assert data["buckets"][0]["precision"] == pytest.approx(np.mean([r.precision for r in records[:4]]))

    with Image.open(paths["plot"]) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[0] > 300 and pixels.shape[1] > 500
    background = pixels[0, 0]
    assert (np.abs(pixels.astype(int) - background).max(axis=-1) > 60).mean() > 0.01
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20
    assert not list((tmp_path / "out").glob("*.partial"))


def test_report_of_nothing(tmp_path):
    assert len(format_table([]).splitlines()) == 2  # header and rule only
    assert report_dict([])["summary"] is None
    paths = write_report(tmp_path, [])
    with Image.open(paths["plot"]) as image:
        assert image.size[0] > 0
