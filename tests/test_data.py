"""dsocr.data: the synthetic page engine, JSONL manifests, tar shards and the torch datasets."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from dsocr.data import (
    Box,
    ManifestDataset,
    Sample,
    ShardDataset,
    SynthConfig,
    generate_dataset,
    iter_shards,
    read_manifest,
    render_page,
    shard_paths,
    write_manifest,
    write_shards,
)
from dsocr.data.synthetic import LABELS, from_bins, to_bins
from dsocr.data.synthetic import main as synth_main
from dsocr.errors import DsocrError
from dsocr.evaluation.metrics import normalize_text

SMALL = SynthConfig(width=320, height=420, font_size=(10, 14))
CONFIGS = [
    SMALL,
    SynthConfig(width=360, height=460, columns=2, font_size=(9, 12)),
    SynthConfig(width=300, height=380, families=("default",), font_size=(10, 13)),
    SynthConfig(width=300, height=380, families=("mono",), digits=0.5, punctuation=0.5, tables=False),
]


def ink_distance(image: Image.Image, background) -> np.ndarray:
    """Per pixel, the largest channel difference from the background colour."""
    return np.abs(np.asarray(image, dtype=np.int16) - np.array(background, dtype=np.int16)).max(axis=-1)


def box_mask(shape, boxes) -> np.ndarray:
    inside = np.zeros(shape, dtype=bool)
    for x1, y1, x2, y2 in boxes:
        inside[y1:y2, x1:x2] = True
    return inside


# ---------------------------------------------------------------------------------------------
# A tiny independent parser of the grounded Markdown
# ---------------------------------------------------------------------------------------------

TAG = re.compile(r"<\|ref\|>([^<]*)<\|/ref\|><\|det\|>\[\[(\d+), (\d+), (\d+), (\d+)\]\]<\|/det\|>\n")


def parse_grounded(text: str) -> list[tuple[str, tuple[int, int, int, int], str]]:
    """(label, box, content) per block; asserts that nothing but tagged blocks is there."""
    matches = list(TAG.finditer(text))
    assert matches and matches[0].start() == 0
    blocks = []
    for k, match in enumerate(matches):
        end = matches[k + 1].start() if k + 1 < len(matches) else len(text)
        content = text[match.end():end]
        if k + 1 < len(matches):
            assert content.endswith("\n\n")
            content = content[:-2]
        blocks.append((match.group(1), tuple(int(match.group(i)) for i in range(2, 6)), content))
    return blocks


# ---------------------------------------------------------------------------------------------
# Synthetic pages
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS[:3])
def test_same_seed_same_page(config):
    a, b = render_page(1234, config), render_page(1234, config)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.plain_text() == b.plain_text() and a.markdown() == b.markdown()
    c = render_page(1235, config)
    assert c.image.tobytes() != a.image.tobytes() and c.plain_text() != a.plain_text()


def test_degradations_are_deterministic_too():
    config = SynthConfig(width=300, height=400, rotation=3, blur=0.8, noise=12)
    a, b = render_page(5, config), render_page(5, config)
    assert a.image.tobytes() == b.image.tobytes()
    assert [blk.box for blk in a.blocks] == [blk.box for blk in b.blocks]
    # The degradations changed the picture but not the clean page.
    plain = render_page(5, SynthConfig(width=300, height=400))
    assert a.clean_image.tobytes() == plain.image.tobytes()
    assert a.image.tobytes() != plain.image.tobytes()


def test_generate_dataset_is_deterministic_across_processes(tmp_path):
    here = generate_dataset(tmp_path / "a", 3, seed=7, config=SMALL)
    env = dict(os.environ, PYTHONHASHSEED="123")
    subprocess.run([sys.executable, "-m", "dsocr.data.synthetic", str(tmp_path / "b"), "-n", "3", "--seed", "7",
                    "--width", "320", "--height", "420", "--font-size", "10", "14"],
                   check=True, env=env, capture_output=True)
    there = tmp_path / "b" / "manifest.jsonl"
    assert here.read_text() == there.read_text()
    for k in range(3):
        name = f"images/page-{k:06d}.png"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    other = generate_dataset(tmp_path / "c", 3, seed=8, config=SMALL)
    assert other.read_text() != here.read_text()


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_boxes_cover_the_ink_and_nothing_else(config, seed):
    page = render_page(seed, config)
    assert page.blocks and page.blocks[0].label == "title"
    distance = ink_distance(page.clean_image, page.background)
    boxes = [blk.clean_box for blk in page.blocks]
    # Outside the boxes the clean page is exactly background ...
    assert distance[~box_mask(distance.shape, boxes)].max() == 0
    W, H = page.size
    for blk in page.blocks:
        x1, y1, x2, y2 = blk.clean_box
        assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H
        assert blk.label in LABELS
        # ... and every box holds dark text, touching all four of its sides (a tight box).
        region = distance[y1:y2, x1:x2] > 0
        assert (distance[y1:y2, x1:x2] > 100).any()
        assert region[0].any() and region[-1].any() and region[:, 0].any() and region[:, -1].any()
    # Blocks never overlap.
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


@pytest.mark.parametrize("seed", [3, 4])
def test_rotated_boxes_still_cover_the_ink(seed):
    config = SynthConfig(width=320, height=420, columns=2, rotation=6)
    page = render_page(seed, config)
    assert page.angle != 0
    distance = ink_distance(page.image, page.background)
    assert distance[~box_mask(distance.shape, [blk.box for blk in page.blocks])].max() == 0
    for blk in page.blocks:
        x1, y1, x2, y2 = blk.box
        assert (distance[y1:y2, x1:x2] > 100).any()


@pytest.mark.parametrize("config", CONFIGS)
def test_grounded_markdown_parses_back(config):
    page = render_page(11, config)
    W, H = page.size
    parsed = parse_grounded(page.markdown(grounded=True))
    assert len(parsed) == len(page.blocks)
    for (label, bins, content), blk in zip(parsed, page.blocks):
        assert label == blk.label and content == blk.markdown
        assert all(0 <= v <= 999 for v in bins) and bins[0] <= bins[2] and bins[1] <= bins[3]
        # The official decoding gives back a box containing the pixel box (to one pixel).
        x1, y1, x2, y2 = from_bins(bins, W, H)
        bx1, by1, bx2, by2 = blk.box
        assert x1 <= bx1 and y1 <= by1 and x2 >= bx2 - 1 and y2 >= by2 - 1
        assert bx1 - x1 <= W / 999 + 1 and by1 - y1 <= H / 999 + 1
        if label == "title":
            assert content.startswith("# ")
        if label == "table":
            assert content.startswith("<table><tr><td>") and content.endswith("</td></tr></table>")
    # Markdown without tags is the contents; the plain text carries the same words.
    assert page.markdown(grounded=False) == "\n\n".join(content for _, _, content in parsed)
    both = [normalize_text(t, strip_markdown=True, collapse_whitespace=True)
            for t in (page.markdown(grounded=True), page.plain_text())]
    assert both[0] == both[1]


def test_pages_have_every_kind_of_block():
    labels = set()
    for seed in range(12):
        labels |= {blk.label for blk in render_page(seed, SynthConfig(width=400, height=560)).blocks}
    assert labels == set(LABELS)


def test_to_bins_rounds_outwards():
    assert to_bins((0, 0, 640, 640), 640, 640) == (0, 0, 999, 999)
    assert to_bins((100, 50, 101, 51), 1000, 1000) == (99, 49, 101, 51)
    # floor for the top-left corner, ceil for the bottom-right one
    assert to_bins((1, 1, 1, 1), 3, 3) == (333, 333, 333, 333)
    assert to_bins((1, 1, 2, 2), 7, 7) == (142, 142, 286, 286)
    assert from_bins((142, 142, 286, 286), 7, 7) == (0, 0, 2, 2)


def test_generate_dataset_manifest(tmp_path):
    manifest = generate_dataset(tmp_path, 2, seed=3, config=SMALL)
    samples = read_manifest(manifest)
    assert [s.id for s in samples] == ["page-000000-free", "page-000000-markdown",
                                       "page-000001-free", "page-000001-markdown"]
    assert samples[0].prompt == "<image>\nFree OCR."
    assert samples[1].prompt == "<image>\n<|grounding|>Convert the document to markdown."
    assert samples[1].target.startswith("<|ref|>title<|/ref|><|det|>[[")
    assert "<|ref|>" not in samples[0].target
    assert samples[0].images == samples[1].images == [tmp_path / "images" / "page-000000.png"]
    assert samples[0].boxes and samples[0].boxes[0].label == "title"
    line = json.loads(manifest.read_text().splitlines()[0])
    assert line["images"] == ["images/page-000000.png"]
    only = read_manifest(generate_dataset(tmp_path / "md", 1, seed=3, config=SMALL, task="markdown"))
    assert [s.id for s in only] == ["page-000000"] and only[0].target == samples[1].target


def test_synth_command_line(tmp_path, capsys):
    assert synth_main([str(tmp_path), "-n", "2", "--width", "256", "--height", "320", "--fonts", "serif",
                       "--task", "free", "--shards", "1"]) == 0
    assert len(read_manifest(tmp_path / "manifest.jsonl")) == 2
    assert len(shard_paths(tmp_path / "shards")) == 2
    assert synth_main([str(tmp_path / "x"), "-n", "1", "--width", "10"]) == 1
    assert "too small" in capsys.readouterr().err
    assert synth_main([str(tmp_path / "x"), "-n", "1", "--fonts", "comic"]) == 1

    from dsocr.cli import synth

    parser = argparse.ArgumentParser(prog="dsocr")
    synth.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["synth", str(tmp_path / "cli"), "-n", "1", "--width", "256", "--height", "320"])
    assert args.run(args) == 0
    assert len(read_manifest(tmp_path / "cli" / "manifest.jsonl")) == 2


# ---------------------------------------------------------------------------------------------
# Manifests
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "data" / "img"
    folder.mkdir(parents=True)
    paths = []
    for k, colour in enumerate([(255, 0, 0), (0, 128, 255), (10, 200, 30)]):
        path = folder / f"{k}.png"
        Image.new("RGB", (32 + k, 24), colour).save(path)
        paths.append(path)
    return paths


def test_manifest_round_trip(tmp_path, images):
    outside = tmp_path / "elsewhere.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(outside)
    samples = [
        Sample(images=[images[0]], prompt="<image>\nFree OCR.", target="héllo\nworld", id="a",
               boxes=[Box("title", (1, 2, 30, 20), "héllo"), Box("text", (0.5, 1.25, 3, 4), "")],
               meta={"source": "test", "n": 1}),
        Sample(images=[images[1], images[2]], prompt="<image>\n<image>\nCompare.", target="x"),
        Sample(images=[outside], prompt="<image>\nFree OCR.", target="", boxes=[], id="c"),
        Sample(images=[], prompt="Just text.", target="text only"),
    ]
    path = write_manifest(tmp_path / "data" / "train.jsonl", samples)
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert lines[0]["images"] == ["img/0.png"]
    assert lines[2]["images"] == [outside.as_posix()]
    assert lines[0]["boxes"][0] == {"label": "title", "box": [1, 2, 30, 20], "text": "héllo"}
    assert "boxes" not in lines[1] and "id" not in lines[1] and "meta" not in lines[1]
    back = read_manifest(path)
    assert back == samples
    loaded = back[1].load_images()
    assert [im.size for im in loaded.images] == [(33, 24), (34, 24)]
    assert loaded.images[0].getpixel((0, 0)) == (0, 128, 255)


def test_write_manifest_is_atomic(tmp_path, images):
    path = tmp_path / "m.jsonl"
    write_manifest(path, [Sample(images=[images[0]], prompt="<image>\nFree OCR.", target="a")])
    before = path.read_text()
    in_memory = Sample(images=[Image.new("RGB", (4, 4))], prompt="<image>\nFree OCR.", target="b")
    with pytest.raises(DsocrError, match="in-memory image"):
        write_manifest(path, [in_memory])
    assert path.read_text() == before
    assert not list(tmp_path.glob("*.partial"))


GOOD = {"images": ["img/0.png"], "prompt": "<image>\nFree OCR.", "target": "t"}


@pytest.mark.parametrize("bad, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"images": ["img/0.png"], "prompt": "<image>\nx"}), "missing key(s) 'target'"),
    (json.dumps({**GOOD, "promt": "x"}), "unknown key(s) 'promt'"),
    (json.dumps({**GOOD, "images": ["img/missing.png"]}), "image file not found: img/missing.png"),
    (json.dumps({**GOOD, "prompt": "Free OCR."}), "0 <image> placeholder(s) but the sample has 1 image(s)"),
    (json.dumps({**GOOD, "prompt": "<image><image>"}), "2 <image> placeholder(s) but the sample has 1"),
    (json.dumps({**GOOD, "images": "img/0.png"}), "'images' must be a list"),
    (json.dumps({**GOOD, "target": 3}), "'target' must be a string"),
    (json.dumps({**GOOD, "boxes": [{"label": "text", "box": [1, 2, 3]}]}), "boxes[0]: 'box' must be"),
    (json.dumps({**GOOD, "boxes": [{"label": "text", "box": [5, 2, 3, 4]}]}), "inverted or negative"),
    (json.dumps({**GOOD, "boxes": [{"box": [1, 2, 3, 4]}]}), "'label' must be a non-empty string"),
    (json.dumps({**GOOD, "meta": []}), "'meta' must be a JSON object"),
    (json.dumps({**GOOD, "id": "a"}), "duplicate id 'a' (first on line 1)"),
])
def test_malformed_manifest_names_file_and_line(tmp_path, images, bad, message):
    path = tmp_path / "data" / "broken.jsonl"
    path.write_text(json.dumps({**GOOD, "id": "a"}) + "\n\n" + bad + "\n", encoding="utf-8")
    with pytest.raises(DsocrError) as info:
        read_manifest(path)
    assert str(info.value).startswith(f"{path}:3: ")
    assert message in str(info.value)


def test_manifest_file_errors(tmp_path):
    with pytest.raises(DsocrError, match="no such manifest file"):
        read_manifest(tmp_path / "nope.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DsocrError, match="not UTF-8"):
        read_manifest(tmp_path / "bin.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    assert read_manifest(tmp_path / "empty.jsonl") == []
    # Missing files are only reported when asked to check them.
    (tmp_path / "m.jsonl").write_text(json.dumps({**GOOD, "images": ["gone.png"]}) + "\n")
    assert read_manifest(tmp_path / "m.jsonl", check_files=False)[0].images == [tmp_path / "gone.png"]


# ---------------------------------------------------------------------------------------------
# Shards and datasets
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def shard_samples(images):
    return [
        Sample(images=[images[k % 3]], prompt="<image>\nFree OCR.", target=f"text {k}", id=f"s{k}",
               boxes=[Box("text", (0, 0, 5, 5), f"t{k}")] if k % 2 else None, meta={"k": k})
        for k in range(5)
    ] + [Sample(images=[images[0], Image.new("RGB", (6, 5), (9, 9, 9))], prompt="<image><image>two",
                target="pair", id="pair")]


def test_shards_round_trip(tmp_path, shard_samples):
    paths = write_shards(shard_samples, tmp_path / "shards", samples_per_shard=4)
    assert [p.name for p in paths] == ["shard-000000.tar", "shard-000001.tar"]
    back = list(iter_shards(tmp_path / "shards"))
    assert len(back) == len(shard_samples)
    for original, sample in zip(shard_samples, back):
        assert (sample.prompt, sample.target, sample.boxes, sample.id, sample.meta) == \
               (original.prompt, original.target, original.boxes, original.id, original.meta)
        expected = original.load_images().images
        assert [im.tobytes() for im in sample.images] == [im.tobytes() for im in expected]
        assert all(im.mode == "RGB" for im in sample.images)
    # Byte-identical when written again; the same samples through a glob, a brace range, one file.
    again = write_shards(shard_samples, tmp_path / "again", samples_per_shard=4)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]
    assert shard_paths(str(tmp_path / "shards" / "shard-*.tar")) == paths
    assert shard_paths(str(tmp_path / "shards" / "shard-{000000..000001}.tar")) == paths
    assert [s.id for s in iter_shards(paths[1])] == ["s4", "pair"]


def test_shard_layout_is_webdataset(tmp_path, shard_samples):
    paths = write_shards(shard_samples, tmp_path, samples_per_shard=10)
    with tarfile.open(paths[0]) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names[:4] == ["000000000000.json", "000000000000.png", "000000000001.json", "000000000001.png"]
    assert names[-3:] == ["000000000005.json", "000000000005.0.png", "000000000005.1.png"]
    keys = [name.split(".", 1)[0] for name in names]
    # each sample's members are adjacent
    assert keys == sorted(keys)
    assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in members)
    record = json.loads(tarfile.open(paths[0]).extractfile("000000000001.json").read())
    assert record == {"num_images": 1, "prompt": "<image>\nFree OCR.", "target": "text 1",
                      "boxes": [{"label": "text", "box": [0, 0, 5, 5], "text": "t1"}], "id": "s1", "meta": {"k": 1}}


def test_broken_shards(tmp_path):
    import io

    path = tmp_path / "shard-000000.tar"
    with tarfile.open(path, "w") as tar:
        data = b"\x89PNG not really"
        info = tarfile.TarInfo("k1.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DsocrError, match="sample k1: no k1.json member"):
        list(iter_shards(path))
    with tarfile.open(path, "w") as tar:
        for name, data in (("k1.json", json.dumps({"prompt": "<image>", "target": "", "num_images": 1}).encode()),
                           ("k1.png", b"garbage")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DsocrError, match="sample k1: image 0 is not a readable image"):
        list(iter_shards(path))
    (tmp_path / "bad.tar").write_bytes(b"not a tar")
    with pytest.raises(DsocrError, match="not a readable tar file"):
        list(iter_shards(tmp_path / "bad.tar"))
    with pytest.raises(DsocrError, match="no shard file matches"):
        shard_paths(str(tmp_path / "none-*.tar"))


def test_manifest_dataset(tmp_path, images):
    samples = [Sample(images=[p], prompt="<image>\nFree OCR.", target=str(k)) for k, p in enumerate(images)]
    path = write_manifest(tmp_path / "data" / "m.jsonl", samples)
    dataset = ManifestDataset(path)
    assert len(dataset) == 3
    item = dataset[2]
    assert isinstance(item.images[0], Image.Image) and item.images[0].size == (34, 24) and item.target == "2"
    batches = list(DataLoader(dataset, batch_size=2, collate_fn=list))
    assert [[s.target for s in b] for b in batches] == [["0", "1"], ["2"]]


def test_shard_dataset_splits_shards(tmp_path, shard_samples):
    write_shards(shard_samples * 2, tmp_path, samples_per_shard=2)  # 6 shards
    dataset = ShardDataset(tmp_path)
    assert len(dataset.paths) == 6
    assert [s.target for s in dataset] == [s.target for s in shard_samples * 2]
    # Every shard goes to exactly one worker of one rank.
    seen = []
    for rank in range(2):
        ranked = ShardDataset(tmp_path, rank=rank, world_size=2, shuffle_seed=1)
        for worker in range(2):
            seen += ranked.shards_for_worker(worker, 2)
    assert sorted(seen) == dataset.paths
    loader = DataLoader(ShardDataset(tmp_path), batch_size=None, num_workers=2, collate_fn=lambda s: s)
    assert sorted(s.target for s in loader) == sorted(s.target for s in shard_samples * 2)
    with pytest.raises(DsocrError, match="rank"):
        ShardDataset(tmp_path, rank=2, world_size=2)


def test_vocabulary_limits_the_words_drawn():
    from dsocr.data.synthetic import WORDS, SynthConfig, render_page

    config = SynthConfig(width=384, height=256, vocabulary=5, digits=0, punctuation=0, lists=False, tables=False)
    allowed = {w.lower() for w in WORDS[:5]}
    words = {w.strip(".?!,;:").lower() for seed in range(5) for w in render_page(seed, config).plain_text().split()}
    assert words and words <= allowed
