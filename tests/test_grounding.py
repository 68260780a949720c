"""The grounding parser, Markdown clean-up and box drawing on realistic DeepSeek-OCR outputs
(several boxes per tag, HTML tables, LaTeX formulas) and on broken ones (truncated tags,
out-of-range or garbage coordinates), plus a property test that parsing never raises."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dsocr.processing.grounding import (
    FILL_ALPHA,
    LABEL_COLORS,
    PAGE_SPLIT,
    draw_grounding,
    join_pages,
    label_color,
    parse_box_list,
    parse_grounding,
    to_markdown,
    to_pixels,
)

W, H = 1654, 2339  # an A4 page at 200 dpi

PAGE = (
    "<|ref|>title<|/ref|><|det|>[[120, 45, 880, 98]]<|/det|>\n"
    "# Attention Is All You Need\n\n"
    "<|ref|>text<|/ref|><|det|>[[100, 120, 900, 300]]<|/det|>\n"
    "The dominant sequence transduction models are based on complex recurrent networks.\n\n"
    "<|ref|>image<|/ref|><|det|>[[100, 320, 480, 600], [520, 320, 900, 600]]<|/det|>\n\n\n"
    "<|ref|>image_caption<|/ref|><|det|>[[100, 610, 900, 640]]<|/det|>\n"
    "<center>Figure 1: The Transformer - model architecture.</center>\n\n"
    "<|ref|>table<|/ref|><|det|>[[100, 650, 900, 800]]<|/det|>\n"
    "<table><tr><td>Model</td><td>BLEU</td></tr><tr><td>Transformer (big)</td><td>28.4</td></tr></table>\n\n\n\n"
    "<|ref|>text<|/ref|><|det|>[[100,810,900,860]]<|/det|>\n"
    "\\[\n\\mathrm{Attention}(Q, K, V) \\coloneqq \\mathrm{softmax}\\left(\\frac{QK^T}{\\sqrt{d_k}}\\right)V\n\\]\n"
    "<|ref|>text<|/ref|><|det|>[[100, 870, 900, 900]]<|/det|>\n"
    "where $a \\eqqcolon b$."
)


def px(box):
    return tuple(int(v / 999 * s) for v, s in zip(box, (W, H, W, H)))


def test_blocks_labels_boxes_and_text():
    g = parse_grounding(PAGE, W, H)
    assert g.warnings == []
    assert [b.label for b in g.blocks] == ["title", "text", "image", "image_caption", "table", "text", "text"]
    title = g.blocks[0]
    assert title.coords == [(120, 45, 880, 98)]
    assert title.boxes == [px((120, 45, 880, 98))] == [(int(120 / 999 * W), int(45 / 999 * H), int(880 / 999 * W), int(98 / 999 * H))]
    assert title.text == "# Attention Is All You Need"
    image = g.blocks[2]
    assert image.boxes == [px((100, 320, 480, 600)), px((520, 320, 900, 600))] and image.text == ""
    assert g.blocks[4].text == "<table><tr><td>Model</td><td>BLEU</td></tr><tr><td>Transformer (big)</td><td>28.4</td></tr></table>"
    assert g.blocks[5].text.startswith("\\[\n\\mathrm{Attention}") and g.blocks[5].text.endswith("\\]")
    assert g.boxes[0] == ("title", px((120, 45, 880, 98))) and len(g.boxes) == 8


def test_markdown_removes_tags_links_images_and_cleans():
    g = parse_grounding(PAGE, W, H)
    md = to_markdown(g, lambda block, k: f"images/page-0001-{k + 1}.jpg")
    assert "<|" not in md and "|>" not in md
    assert md.startswith("# Attention Is All You Need\n\nThe dominant")
    assert "![](images/page-0001-1.jpg)\n![](images/page-0001-2.jpg)\n" in md  # one link per box
    assert "<table><tr><td>Model</td><td>BLEU</td></tr>" in md  # HTML tables kept as they are
    assert "\\mathrm{Attention}(Q, K, V) := \\mathrm{softmax}" in md and "$a =: b$" in md
    assert "\\coloneqq" not in md and "\\eqqcolon" not in md
    assert "\n\n\n" not in md
    assert md == md.strip()


def test_markdown_without_links_drops_image_blocks():
    md = to_markdown(parse_grounding(PAGE, W, H))
    assert "![](" not in md and "Figure 1" in md
    empty_link = to_markdown(parse_grounding(PAGE, W, H), lambda block, k: "" if k == 0 else "b.jpg")
    assert "![](b.jpg)" in empty_link and "![]()" not in empty_link


def test_labels_are_text_for_the_ocr_prompt():
    out = "<|ref|>Hello world<|/ref|><|det|>[[10, 10, 200, 40]]<|/det|>\n<|ref|>second line<|/ref|><|det|>[[10, 50, 200, 80]]<|/det|>"
    g = parse_grounding(out, 100, 100)
    assert [b.label for b in g.blocks] == ["Hello world", "second line"]
    assert to_markdown(g, labels_are_text=True) == "Hello world\nsecond line"
    assert to_markdown(g) == ""


def test_output_without_grounding_is_one_unlabelled_block():
    g = parse_grounding("Free OCR text.\n\nSecond paragraph.", 10, 10)
    assert len(g.blocks) == 1 and g.blocks[0].label is None and g.blocks[0].boxes == []
    assert to_markdown(g) == "Free OCR text.\n\nSecond paragraph." and g.warnings == []
    assert parse_grounding("", 10, 10).blocks == []


def test_text_before_the_first_tag_is_kept():
    g = parse_grounding("preamble\n<|ref|>text<|/ref|><|det|>[[0, 0, 999, 999]]<|/det|>\nbody", 500, 400)
    assert [(b.label, b.text) for b in g.blocks] == [(None, "preamble"), ("text", "body")]
    assert g.blocks[1].boxes == [(0, 0, 500, 400)]  # 999 maps to the full size


def test_truncated_final_tag_is_text_and_warned():
    out = PAGE + "\n\n<|ref|>text<|/ref|><|det|>[[100, 905, 9"
    g = parse_grounding(out, W, H)
    assert len(g.blocks) == 7
    assert g.blocks[-1].text.endswith("<|ref|>text<|/ref|><|det|>[[100, 905, 9")
    assert len(g.warnings) == 1 and "incomplete grounding tag" in g.warnings[0]
    assert "'<|ref|>text<|/ref|><|det|>[[100, 905, 9'" in g.warnings[0]
    md = to_markdown(g)
    assert md.endswith("<|ref|>text<|/ref|><|det|>[[100, 905, 9")  # kept, visible, never dropped


@pytest.mark.parametrize("det, reason", [
    ("[[100, 200, 1000, 300]]", "outside 0..999"),
    ("[[-5, 200, 300, 300]]", "outside 0..999"),
    ("[[500, 200, 300, 300]]", "inverted box"),
    ("[[1, 2, 3]]", "box list"),
    ("[[1, 2, 3, 4]", "box list"),
    ("[1, 2, 3, 4]", "box list"),
    ("[[1.5, 2, 3, 4]]", "box list"),
    ("[[1e3, 2, 3, 4]]", "box list"),
    ("[]", "box list"),
    ("", "box list"),
    ("__import__('os').system('echo pwned')", "box list"),
    ("[[1, 2, 3, 4], 'x']", "box list"),
])
def test_malformed_det_is_kept_as_text(det, reason):
    bad = f"<|ref|>text<|/ref|><|det|>{det}<|/det|>\nbody"
    g = parse_grounding("<|ref|>title<|/ref|><|det|>[[0, 0, 10, 10]]<|/det|>\nT\n" + bad, 100, 100)
    assert len(g.warnings) == 1 and reason in g.warnings[0] and "kept as text" in g.warnings[0]
    assert [b.label for b in g.blocks] == ["title"]
    assert g.blocks[0].text == "T\n" + bad
    assert bad in to_markdown(g)


def test_det_is_never_evaluated(tmp_path):
    marker = tmp_path / "evaluated"
    det = f"[[1, 2, 3, 4]] if open({str(marker)!r}, 'w') else 0"
    g = parse_grounding(f"<|ref|>text<|/ref|><|det|>{det}<|/det|>", 10, 10)
    assert not marker.exists() and len(g.warnings) == 1


def test_empty_label_and_stray_markers_warn():
    g = parse_grounding("<|ref|> <|/ref|><|det|>[[1, 2, 3, 4]]<|/det|> a <|/det|> b <|det|>", 10, 10)
    assert any("empty label" in w for w in g.warnings)
    assert sum("incomplete grounding tag" in w for w in g.warnings) == 2
    g = parse_grounding("a <|det|> b <|/det|> <|ref|> c <|/det|>", 10, 10)  # det-/det in order; ref then /det not
    assert len(g.warnings) == 3
    assert g.blocks[0].label is None


def test_nested_ref_starts_at_the_inner_tag():
    g = parse_grounding("<|ref|>a<|ref|>title<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>\nX", 999, 999)
    assert [(b.label, b.text) for b in g.blocks] == [(None, "<|ref|>a"), ("title", "X")]
    assert g.blocks[1].boxes == [(1, 2, 3, 4)]


def test_whitespace_and_box_list_forms():
    assert parse_box_list("[[1,2,3,4]]") == [(1, 2, 3, 4)]
    assert parse_box_list(" [ [ 1 , 2 , 3 , 4 ] , [5,6,7,8] ] ") == [(1, 2, 3, 4), (5, 6, 7, 8)]
    assert parse_box_list("[[1,2,3,4]][[5,6,7,8]]") is None
    assert to_pixels((0, 0, 999, 500), 100, 200) == (0, 0, 100, 100)


def test_join_pages_uses_the_official_separator():
    assert PAGE_SPLIT == "\n<--- Page Split --->\n"
    assert join_pages(["a\n", "\nb"]) == "a\n<--- Page Split --->\nb"


def test_label_colors_are_stable_and_distinct():
    assert label_color("title") == LABEL_COLORS["title"]
    assert len(set(LABEL_COLORS.values())) == len(LABEL_COLORS)
    assert label_color("footnote") == label_color("footnote")
    assert label_color("footnote") != label_color("page_header")


def test_drawn_boxes_have_their_colour_at_the_edges():
    page = Image.new("RGB", (400, 300), (255, 255, 255))
    boxes = [("title", (50, 40, 350, 90)), ("text", (50, 150, 350, 250))]
    pixels = np.asarray(draw_grounding(page, boxes)).astype(int)
    for label, (x1, y1, x2, y2) in boxes:
        color = list(label_color(label))
        ymid, xmid = (y1 + y2) // 2, (x1 + x2) // 2
        for x, y in [(x1, ymid), (x2, ymid), (xmid, y1), (xmid, y2)]:
            assert pixels[y, x].tolist() == color, (label, x, y)
        # translucent fill inside: white blended with the colour at alpha 20/255
        expected = [round(255 + (c - 255) * FILL_ALPHA / 255) for c in color]
        assert np.abs(pixels[ymid, xmid] - expected).max() <= 1
        # the label is written above the box, in its colour
        above = pixels[max(0, y1 - 15):y1, x1:x1 + 60]
        assert (np.abs(above - color).sum(-1) < 60).any()
    # title outline width 4, text width 2
    x1, y1, _, y2 = boxes[0][1]
    assert pixels[(y1 + y2) // 2, x1 + 3].tolist() == list(label_color("title"))
    x1, y1, _, y2 = boxes[1][1]
    assert pixels[(y1 + y2) // 2, x1 + 3].tolist() != list(label_color("text"))
    assert pixels[5, 380].tolist() == [255, 255, 255]


def test_drawing_handles_odd_labels_and_edge_boxes():
    page = Image.new("RGB", (50, 40), (0, 0, 0))
    out = draw_grounding(page, [("标题 ü", (0, 0, 50, 40)), ("x", (10, 10, 10, 10))])
    assert out.size == (50, 40) and out.mode == "RGB"


FRAGMENTS = st.sampled_from([
    "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "[[", "]]", "[", "]", ",", " ", "\n", "0", "999", "1000",
    "-1", "12", "title", "image", "text", "<table>", "<td>", "\\[", "\\]", "\\coloneqq", "<|", "|>", "'",
])


@settings(max_examples=300, deadline=None)
@given(st.lists(FRAGMENTS | st.text(max_size=4), max_size=40).map("".join),
       st.integers(1, 3000), st.integers(1, 3000))
def test_parsing_never_raises(text, width, height):
    g = parse_grounding(text, width, height)
    md = to_markdown(g, lambda block, k: f"images/{k}.jpg", labels_are_text=bool(width % 2))
    assert isinstance(md, str)
    for label, (x1, y1, x2, y2) in g.boxes:
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height and label
    # nothing is lost: every character of the output is in a tag or in some block's text
    assert sum(len(p.text) for p in g.pieces) == len(text)
