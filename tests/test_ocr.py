"""`dsocr ocr` and `dsocr.ocr()` end to end with a tiny random DeepSeek-OCR: files written per
page and per document, resume after a kill, `--pages`, bad inputs reported while the run goes
on, exit codes, streaming, unfinished pages. A random model emits random tokens, so the
grounded pipeline (crops, Markdown, JSON, drawn boxes) runs on a realistic output patched in
place of `DeepSeekOCR.generate`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import dsocr
from dsocr.cli import main
from dsocr.errors import DsocrError
from dsocr.inference.ocr import IMAGE_NGRAM, PDF_NGRAM, OCREngine, OCROptions
from dsocr.inference.pipeline import DeepSeekOCR, OCRResult
from dsocr.processing.grounding import PAGE_SPLIT, label_color
from oracles import official_model_dir, unlimited_ocr_model
from test_documents import write_encrypted_pdf, write_pdf, write_tiff

FAST = ["--mode", "tiny", "--max-new-tokens", "3", "-q"]
PAGE_FILES = ("md", "json", "png", "raw.txt")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return official_model_dir(unlimited_ocr_model(seed=0), tmp_path_factory.mktemp("DeepSeek-OCR"))


@pytest.fixture(scope="module")
def loaded(model_dir):
    return DeepSeekOCR.from_pretrained(model_dir)


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.effect_noise((300, 200), 60).convert("RGB").save(folder / "photo.png")
    write_pdf(folder / "report.pdf")  # 3 pages
    write_tiff(folder / "scan.tiff", count=2)
    return folder


@pytest.fixture
def calls(monkeypatch):
    """Count the pages given to `DeepSeekOCR.generate` (the real one still runs)."""
    seen: list[int] = []
    real = DeepSeekOCR.generate

    def counting(self, images, *args, **kwargs):
        seen.append(len(images) if isinstance(images, list) else 1)
        return real(self, images, *args, **kwargs)

    monkeypatch.setattr(DeepSeekOCR, "generate", counting)
    return seen


@pytest.fixture
def reuse(loaded, model_dir, monkeypatch):
    """`DeepSeekOCR.from_pretrained(model_dir)` returns the module's loaded model (loading takes
    seconds); the sources asked for are recorded."""
    asked = []

    def load(cls, source, *args, **kwargs):
        asked.append(str(source))
        if str(source) != str(model_dir):
            raise DsocrError(f"{source}: no such directory (nor an owner/name hub id)")
        return loaded

    monkeypatch.setattr(DeepSeekOCR, "from_pretrained", classmethod(load))
    return asked


def run_cli(capsys, *argv):
    code = main(["ocr", *map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def page_files(folder, number):
    return [folder / f"page-{number:04d}.{ext}" for ext in PAGE_FILES]


def test_cli_writes_every_page_and_resumes(inputs, model_dir, tmp_path, capsys, calls):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, inputs / "photo.png", inputs / "report.pdf", inputs / "scan.tiff",
                           "-o", out, "--model", model_dir, *FAST)
    assert code == 0, err
    assert sum(calls) == 6
    for stem, count in [("photo", 1), ("report", 3), ("scan", 2)]:
        folder = out / stem
        for number in range(1, count + 1):
            assert all(path.is_file() for path in page_files(folder, number))
            record = json.loads((folder / f"page-{number:04d}.json").read_text())
            assert record["page"] == number and record["document"] == stem and record["mode"] == "tiny"
            assert record["tokens"]["generated"] == 3 and record["tokens"]["image"] == 73
            assert record["finished"] is False  # 3 tokens never reach EOS
            assert (folder / f"page-{number:04d}.raw.txt").read_text() is not None
        combined = (folder / f"{stem}.md").read_text()
        assert combined.count(PAGE_SPLIT.strip()) == count - 1
    assert json.loads((out / "report" / "page-0002.json").read_text())["size"] == [600, 400]  # 144 dpi
    assert not list(out.rglob("*.partial"))
    assert "3 documents: 6 pages done, 0 skipped" in err and "6 unfinished" in err
    assert f"loading model {model_dir}" in err


def test_cli_resumes_and_forces(inputs, model_dir, tmp_path, capsys, calls, reuse):
    out = tmp_path / "out"
    pdf = inputs / "report.pdf"
    assert run_cli(capsys, pdf, "-o", out, "--model", model_dir, *FAST)[0] == 0
    assert sum(calls) == 3 and reuse == [str(model_dir)]
    before = {p: p.read_bytes() for p in (out / "report").glob("page-000[13].*")}
    calls.clear()
    (out / "report" / "page-0002.json").unlink()  # as if killed while writing page 2
    code, _, err = run_cli(capsys, pdf, "-o", out, "--model", model_dir, *FAST)
    assert code == 0 and calls == [1]
    assert "1 page done, 2 skipped" in err
    assert before == {p: p.read_bytes() for p in before}
    calls.clear()
    code, _, err = run_cli(capsys, pdf, "-o", out, "--model", "/does/not/exist", *FAST)
    assert code == 0 and calls == [] and "0 pages done, 3 skipped" in err and reuse == [str(model_dir)] * 2
    code, _, err = run_cli(capsys, pdf, "-o", out, "--model", model_dir, "--force", *FAST)
    assert code == 0 and sum(calls) == 3 and "3 pages done, 0 skipped" in err


def test_pages_selection_and_its_errors(inputs, model_dir, tmp_path, capsys, calls, reuse):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, inputs / "report.pdf", inputs / "photo.png", "-o", out, "--model", model_dir,
                           "--pages", "2-3", *FAST)
    assert code == 0, err
    assert sorted(p.name for p in (out / "report").glob("page-*.json")) == ["page-0002.json", "page-0003.json"]
    assert (out / "photo" / "page-0001.json").is_file()  # a plain image has one page, --pages does not apply

    code, _, err = run_cli(capsys, inputs / "report.pdf", inputs / "scan.tiff", inputs / "photo.png", "-o", out,
                           "--model", model_dir, "--pages", "1,3", *FAST)
    assert code == 1
    assert "dsocr ocr: error: scan.tiff: page 3 is beyond the document's 2 pages" in err.replace(str(inputs) + "/", "")
    assert (out / "report" / "page-0001.json").is_file()  # the others went on

    calls.clear()
    code, _, err = run_cli(capsys, inputs / "report.pdf", "-o", out, "--model", model_dir, "--pages", "2-x", *FAST)
    assert code == 1 and calls == []
    assert err.strip() == "dsocr ocr: error: invalid page selection '2-x': expected items like 3, 1-5 or 8- separated by commas"


def test_bad_inputs_are_reported_and_the_run_goes_on(inputs, model_dir, tmp_path, capsys, reuse):
    bad = tmp_path / "bad"
    bad.mkdir()
    write_encrypted_pdf(bad / "locked.pdf")
    (bad / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj\n<<")
    (bad / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, bad / "locked.pdf", bad / "missing.jpg", bad / "broken.pdf", bad / "corrupt.png",
                           tmp_path / "empty", inputs / "photo.png", "-o", out, "--model", model_dir, *FAST)
    assert code == 1
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 5 and all(line.startswith("dsocr ocr: error: ") for line in lines)
    for text in ["locked.pdf: the PDF is encrypted", "missing.jpg: no such file", "broken.pdf: corrupt or unreadable PDF",
                 "corrupt.png", "empty: no png"]:
        assert any(text in line for line in lines), text
    assert (out / "photo" / "page-0001.json").is_file()
    assert "1 page done" in err and "1 failed" in err and "5 inputs with errors" in err
    assert not (out / "corrupt").exists() or not list((out / "corrupt").glob("*.json"))

    code, _, err = run_cli(capsys, bad / "missing.jpg", "-o", out, "--model", model_dir, *FAST)
    assert code == 1 and "0 documents" in err


def test_user_mistakes_are_one_line_errors(inputs, tmp_path, capsys, reuse):
    photo = inputs / "photo.png"
    for argv, message in [
        ([photo, "-o", tmp_path / "o", "--mode", "huge"], "unknown mode 'huge'"),
        ([photo, "-o", tmp_path / "o", "--prompt", "no image here"], "has no <image>"),
        ([photo, "-o", tmp_path / "o", "--prompt", "locate"], "needs the text to locate"),
        ([photo, "-o", photo], "the output folder is a file"),
        ([photo, "-o", tmp_path / "o", "--stream", "--batch-size", "2"], "--stream shows one page at a time"),
        ([photo, "-o", tmp_path / "o", "--model", tmp_path / "nomodel"], "nomodel: no such directory"),
    ]:
        code, _, err = run_cli(capsys, *argv, "-q")
        assert code == 1 and message in err, err
        errors = [line for line in err.splitlines() if "error:" in line]
        assert len(errors) == 1 and errors[0].startswith("dsocr ocr: error: "), err


def test_stream_prints_each_page_as_generated(inputs, model_dir, tmp_path, capsys, reuse):
    out = tmp_path / "out"
    code, stdout, _ = run_cli(capsys, inputs / "scan.tiff", "-o", out, "--model", model_dir, "--stream", *FAST)
    assert code == 0
    raw = [(out / "scan" / f"page-{n:04d}.raw.txt").read_text() for n in (1, 2)]
    assert stdout == f"==> scan page 1 <==\n{raw[0]}\n==> scan page 2 <==\n{raw[1]}\n"


def test_model_is_loaded_once_and_settings_follow_the_document_kind(inputs, model_dir, monkeypatch, reuse):
    seen = []
    real_generate = DeepSeekOCR.generate

    def generate(self, images, *args, settings=None, **kwargs):
        seen.append((settings.ngram_size, settings.ngram_window, settings.max_new_tokens))
        return real_generate(self, images, *args, settings=settings, **kwargs)

    monkeypatch.setattr(DeepSeekOCR, "generate", generate)
    run = dsocr.ocr([inputs / "photo.png", inputs / "report.pdf"], model=str(model_dir), mode="tiny", max_new_tokens=2,
                    pages="1")
    assert reuse == [str(model_dir)]
    assert seen == [(*IMAGE_NGRAM, 2), (*PDF_NGRAM, 2)]
    assert [p.page for p in run] == [1, 1]
    seen.clear()
    dsocr.ocr(inputs / "photo.png", model=str(model_dir), mode="tiny", max_new_tokens=2, ngram_size=7, ngram_window=9)
    assert seen == [(7, 9, 2)]


def test_python_api_in_memory(inputs, loaded, tmp_path):
    image = Image.effect_noise((1280, 640), 40).convert("RGB")
    run = dsocr.ocr([image, inputs / "report.pdf"], model=loaded, mode="gundam", pages=[2], max_new_tokens=2)
    assert len(run) == 2 and run.documents == 2 and not run.failures
    first, second = run
    assert (first.document, first.source, first.page) == ("image-1", "<image 1>", 1)
    assert first.grid == (2, 1) and first.image_tokens == 273 + 10 * 1 * (10 * 2 + 1)  # gundam tiles
    assert (second.document, second.page, second.size) == ("report", 2, (600, 400))
    for page in run:
        assert page.generated_tokens == 2 and not page.finished and not page.skipped and page.files == {}
        assert isinstance(page.raw, str) and isinstance(page.markdown, str) and page.prompt_tokens > page.image_tokens
        assert page.blocks == [] or page.blocks[0].label is None
    assert not list(tmp_path.rglob("*.json"))
    assert "2 pages done" in run.summary()


def test_python_api_errors_raise_or_skip(inputs, loaded, tmp_path):
    with pytest.raises(DsocrError, match="nothing.png: no such file"):
        dsocr.ocr([tmp_path / "nothing.png", inputs / "photo.png"], model=loaded, mode="tiny", max_new_tokens=1)
    run = dsocr.ocr([tmp_path / "nothing.png", inputs / "photo.png"], model=loaded, mode="tiny", max_new_tokens=1,
                    errors="skip")
    assert len(run) == 1 and run.failures[0].page is None and "nothing.png" in run.failures[0].message
    with pytest.raises(DsocrError, match="errors must be"):
        dsocr.ocr(inputs / "photo.png", model=loaded, errors="ignore")


def test_batches_equal_single_pages(inputs, loaded):
    single = dsocr.ocr(inputs / "report.pdf", model=loaded, mode="tiny", max_new_tokens=4, pages="1-2")
    batched = dsocr.ocr(inputs / "report.pdf", model=loaded, mode="tiny", max_new_tokens=4, pages="1-2", batch_size=2)
    assert [p.raw for p in batched] == [p.raw for p in single] and len(single) == 2


def test_interrupted_run_leaves_only_whole_pages(inputs, loaded, tmp_path, monkeypatch):
    real = DeepSeekOCR.generate
    count = []

    def dies_on_second_page(self, *args, **kwargs):
        count.append(1)
        if len(count) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(DeepSeekOCR, "generate", dies_on_second_page)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        dsocr.ocr(inputs / "report.pdf", out, model=loaded, mode="tiny", max_new_tokens=2)
    folder = out / "report"
    assert sorted(p.name for p in folder.iterdir()) == [f"page-0001.{ext}" for ext in sorted(PAGE_FILES)]
    monkeypatch.setattr(DeepSeekOCR, "generate", real)
    run = dsocr.ocr(inputs / "report.pdf", out, model=loaded, mode="tiny", max_new_tokens=2)
    assert [(p.page, p.skipped) for p in run] == [(1, True), (2, False), (3, False)]
    assert run[0].raw == (folder / "page-0001.raw.txt").read_text() and run[0].generated_tokens == 2
    assert run[1].files["json"] == str(folder / "page-0002.json") and run[1].images == {}


def test_output_folder_inside_the_input_folder_is_not_read(inputs, loaded):
    out = inputs / "ocr-out"
    first = dsocr.ocr(inputs, out, model=loaded, mode="tiny", max_new_tokens=1)
    second = dsocr.ocr(inputs, out, model=loaded, mode="tiny", max_new_tokens=1)
    assert len(first) == len(second) == 6 and all(p.skipped for p in second)


# ---- the grounded pipeline on a realistic output --------------------------------------------

GROUNDED = (
    "<|ref|>title<|/ref|><|det|>[[100, 40, 900, 90]]<|/det|>\n# Quarterly Report\n\n"
    "<|ref|>text<|/ref|><|det|>[[100, 120, 900, 250]]<|/det|>\nRevenue grew by 12 %, where $r \\coloneqq R_1/R_0$.\n\n"
    "<|ref|>image<|/ref|><|det|>[[100, 300, 450, 600], [550, 300, 900, 600]]<|/det|>\n\n\n\n"
    "<|ref|>image_caption<|/ref|><|det|>[[100, 620, 900, 650]]<|/det|>\nFigure 1: Sales by region.\n\n"
    "<|ref|>table<|/ref|><|det|>[[100, 700, 900, 850]]<|/det|>\n"
    "<table><tr><td>Region</td><td>Sales</td></tr><tr><td>North</td><td>42</td></tr></table>\n"
    "<|ref|>text<|/ref|><|det|>[[100, 880, 900, 1200]]<|/det|>\nA bad box.\n"
    "<|ref|>text<|/ref|><|det|>[[100, 900, 9"
)


@pytest.fixture
def grounded(monkeypatch):
    """`DeepSeekOCR.generate` answering GROUNDED (streamed), finished unless told otherwise."""
    state = {"finished": True}

    def fake(self, images, prompt="markdown", mode="gundam", *, stream=None, **kwargs):
        pages = images if isinstance(images, list) else [images]
        for sample in range(len(pages)):
            if stream is not None:
                stream(sample, GROUNDED)
        return [OCRResult(GROUNDED, list(range(5, 105)), state["finished"], 120, 111, [None]) for _ in pages]

    monkeypatch.setattr(DeepSeekOCR, "generate", fake)
    return state


def _page_with_figures(path, size=(1000, 1400)):
    page = Image.new("RGB", size, (255, 255, 255))
    w, h = size
    box = lambda v: tuple(int(c / 999 * s) for c, s in zip(v, (w, h, w, h)))  # noqa: E731
    page.paste((255, 0, 0), box((100, 300, 450, 600)))
    page.paste((0, 0, 255), box((550, 300, 900, 600)))
    page.save(path)
    return box


def test_grounded_page_files(loaded, tmp_path, grounded, capsys):
    box = _page_with_figures(tmp_path / "report.png")
    out = tmp_path / "out"
    run = dsocr.ocr(tmp_path / "report.png", out, model=loaded, mode="small")
    page = run[0]
    folder = out / "report"

    raw = (folder / "page-0001.raw.txt").read_text()
    assert raw == GROUNDED == page.raw
    md = (folder / "page-0001.md").read_text()
    assert md == page.markdown + "\n"
    assert md.startswith("# Quarterly Report\n\nRevenue grew by 12 %, where $r := R_1/R_0$.\n\n"
                         "![](images/page-0001-1.jpg)\n![](images/page-0001-2.jpg)\n\nFigure 1: Sales by region.\n\n"
                         "<table><tr><td>Region</td><td>Sales</td></tr>")
    assert "<|ref|>title" not in md and "\n\n\n" not in md
    assert md.rstrip().endswith("<|ref|>text<|/ref|><|det|>[[100, 900, 9")  # a truncated tag stays visible

    for k, (coords, color) in enumerate([((100, 300, 450, 600), (255, 0, 0)), ((550, 300, 900, 600), (0, 0, 255))], 1):
        crop = Image.open(folder / "images" / f"page-0001-{k}.jpg")
        x1, y1, x2, y2 = box(coords)
        assert crop.size == (x2 - x1, y2 - y1)
        assert np.abs(np.asarray(crop).reshape(-1, 3).mean(0) - color).max() < 8

    record = json.loads((folder / "page-0001.json").read_text())
    assert record["finished"] is True and record["size"] == [1000, 1400] and record["mode"] == "small"
    assert record["tokens"] == {"prompt": 120, "image": 111, "generated": 100}
    assert set(record["timing"]) == {"render_s", "generate_s", "tokens_per_s"}
    labels = [b["label"] for b in record["blocks"]]
    assert labels == ["title", "text", "image", "image_caption", "table"]  # the malformed tags are text
    assert record["blocks"][0]["boxes"] == [list(box((100, 40, 900, 90)))]
    assert record["blocks"][0]["coords"] == [[100, 40, 900, 90]]
    assert record["blocks"][2]["images"] == ["images/page-0001-1.jpg", "images/page-0001-2.jpg"]
    assert record["blocks"][4]["text"].startswith("<table><tr><td>Region</td>")
    assert record["blocks"][4]["text"].endswith("[[100, 880, 900, 1200]]<|/det|>\nA bad box.\n<|ref|>text<|/ref|><|det|>[[100, 900, 9")
    assert len(record["warnings"]) == 2, record["warnings"]  # the out-of-range box and the truncated tag
    assert "outside 0..999" in record["warnings"][0] and "incomplete" in record["warnings"][1]

    drawn = np.asarray(Image.open(folder / "page-0001.png").convert("RGB")).astype(int)
    for label, coords in [("title", (100, 40, 900, 90)), ("table", (100, 700, 900, 850)), ("image", (100, 300, 450, 600))]:
        x1, y1, x2, y2 = box(coords)
        ymid, xmid = (y1 + y2) // 2, (x1 + x2) // 2
        for x, y in [(x1, ymid), (x2, ymid), (xmid, y1), (xmid, y2)]:
            assert drawn[y, x].tolist() == list(label_color(label)), (label, x, y)

    assert (folder / "report.md").read_text() == md
    assert page.images == {} and page.files["images/page-0001-2.jpg"] == str(folder / "images" / "page-0001-2.jpg")
    in_memory = dsocr.ocr(tmp_path / "report.png", model=loaded)[0]
    x1, y1, x2, y2 = box((100, 300, 450, 600))
    assert in_memory.markdown == page.markdown and in_memory.images["images/page-0001-1.jpg"].size == (x2 - x1, y2 - y1)
    assert list(in_memory.images) == ["images/page-0001-1.jpg", "images/page-0001-2.jpg"]


def test_grounded_multipage_document_markdown(loaded, tmp_path, grounded):
    write_pdf(tmp_path / "doc.pdf", sizes=((300, 400), (300, 400)))
    run = dsocr.ocr(tmp_path / "doc.pdf", tmp_path / "out", model=loaded, mode="tiny")
    folder = tmp_path / "out" / "doc"
    pages = [(folder / f"page-{n:04d}.md").read_text().strip() for n in (1, 2)]
    assert (folder / "doc.md").read_text() == pages[0] + PAGE_SPLIT + pages[1] + "\n"
    assert "![](images/page-0002-2.jpg)" in pages[1] and (folder / "images" / "page-0002-2.jpg").is_file()
    assert [p.page for p in run] == [1, 2]


def test_unfinished_pages_are_kept_and_counted(loaded, model_dir, tmp_path, grounded, capsys, reuse):
    grounded["finished"] = False
    Image.new("RGB", (200, 200), "white").save(tmp_path / "loop.png")
    code, _, err = run_cli(capsys, tmp_path / "loop.png", "-o", tmp_path / "out", "--model", model_dir, "-q")
    assert code == 0
    record = json.loads((tmp_path / "out" / "loop" / "page-0001.json").read_text())
    assert record["finished"] is False and (tmp_path / "out" / "loop" / "page-0001.md").read_text()
    assert "loop.png: page 1: stopped at the length limit without EOS" in err
    assert "1 page done, 0 skipped (already done), 0 failed, 1 unfinished" in err


def test_ocr_preset_keeps_the_text_of_its_labels(loaded, tmp_path, monkeypatch):
    text = "<|ref|>Hello<|/ref|><|det|>[[0, 0, 500, 100]]<|/det|>\n<|ref|>world<|/ref|><|det|>[[0, 100, 500, 200]]<|/det|>"
    monkeypatch.setattr(DeepSeekOCR, "generate", lambda self, images, *a, **k: [OCRResult(text, [1], True, 1, 1, [None])])
    run = dsocr.ocr(Image.new("RGB", (50, 50)), model=loaded, prompt="ocr")
    assert run[0].markdown == "Hello\nworld"


def test_engine_rejects_bad_options(loaded):
    for options, message in [(OCROptions(max_new_tokens=0), "max_new_tokens"), (OCROptions(batch_size=0), "batch_size"),
                             (OCROptions(pages="x"), "invalid page selection"), (OCROptions(mode="nope"), "unknown mode"),
                             (OCROptions(max_tiles=12), "max_tiles"), (OCROptions(dpi=0), "dpi"),
                             (OCROptions(preprocessing="x"), "preprocessing")]:
        with pytest.raises(DsocrError, match=message):
            OCREngine(loaded, options)


def test_help_lists_the_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["ocr", "--help"])
    assert exit_info.value.code == 0 and "--pages" in capsys.readouterr().out
