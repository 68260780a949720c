"""Input discovery (files, directories, list files), page selection, and opening documents:
PDFs rendered with pypdfium2 at 144 dpi, multi-page TIFFs, and every kind of bad input
(missing, corrupt, encrypted) refused with a one-line error naming the file."""

from __future__ import annotations

import hashlib
import os
import struct

import numpy as np
import pytest
from PIL import Image

from dsocr.errors import DsocrError
from dsocr.processing.documents import Source, discover, open_document, parse_pages, select_pages

COLORS = [(255, 0, 0), (0, 160, 0), (0, 0, 255), (200, 200, 0)]


# ---- helpers shared with test_ocr.py ------------------------------------------------------

def write_pdf(path, sizes=((200, 300), (300, 200), (200, 300)), colors=COLORS):
    """A PDF with one solid-coloured page per size (in points: Pillow writes 72 dpi)."""
    pages = [Image.new("RGB", size, colors[i % len(colors)]) for i, size in enumerate(sizes)]
    pages[0].save(path, format="PDF", save_all=True, append_images=pages[1:], resolution=72)
    return path


def write_tiff(path, count=3, size=(120, 90)):
    frames = [Image.new("RGB", size, COLORS[i % len(COLORS)]) for i in range(count)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    return path


_PAD = bytes.fromhex("28BF4E5E4E758A4164004E56FFFA01082E2E00B6D0683E802F0CA9FE6453697A")


def _rc4(key: bytes, data: bytes) -> bytes:
    s, j = list(range(256)), 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) % 256
        s[i], s[j] = s[j], s[i]
    out, i, j = bytearray(), 0, 0
    for byte in data:
        i = (i + 1) % 256
        j = (j + s[i]) % 256
        s[i], s[j] = s[j], s[i]
        out.append(byte ^ s[(s[i] + s[j]) % 256])
    return bytes(out)


def write_encrypted_pdf(path, user_password="secret", owner_password="owner"):
    """A real password-protected one-page PDF, written by hand: the standard security handler,
    revision 2 (40-bit RC4, PDF 1.4 §3.5), with its content stream encrypted."""
    pad = lambda pw: (pw.encode("latin-1") + _PAD)[:32]  # noqa: E731
    permissions, file_id = struct.pack("<i", -44), b"dsocr-test-id-01"
    owner_entry = _rc4(hashlib.md5(pad(owner_password)).digest()[:5], pad(user_password))
    key = hashlib.md5(pad(user_password) + owner_entry + permissions + file_id).digest()[:5]
    user_entry = _rc4(key, _PAD)
    stream = _rc4(hashlib.md5(key + (4).to_bytes(3, "little") + b"\0\0").digest()[:10],
                  b"BT /F1 24 Tf 20 100 Td (Secret) Tj ET")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Filter /Standard /V 1 /R 2 /O <%s> /U <%s> /P -44 >>" % (owner_entry.hex().encode(), user_entry.hex().encode()),
    ]
    data, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(data))
        data += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(data)
    data += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    data += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    data += b"trailer\n<< /Size %d /Root 1 0 R /Encrypt 6 0 R /ID [<%s> <%s>] >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, file_id.hex().encode(), file_id.hex().encode(), xref)
    with open(path, "wb") as handle:
        handle.write(bytes(data))
    return path


def _source(path):
    return Source(str(path), path.stem, path=path)


# ---- discovery -------------------------------------------------------------------------------

def test_discover_files_directories_and_list_files(tmp_path):
    docs = tmp_path / "docs"
    (docs / "b" / "deep").mkdir(parents=True)
    (docs / ".hidden").mkdir()
    for name in ["b/deep/z.PNG", "a.jpg", "b/y.webp", "c.pdf", "notes.txt", ".secret.png", ".hidden/x.png", "scan.tiff"]:
        (docs / name).write_bytes(b"x")
    single = tmp_path / "single.bmp"
    single.write_bytes(b"x")
    listing = tmp_path / "lists" / "inputs.txt"
    listing.parent.mkdir()
    listing.write_text(f"# comment\n\n../single.bmp\n{docs / 'a.jpg'}\n../missing.png\n")

    sources, problems = discover([docs, str(single), f"@{listing}", tmp_path / "nope.png"])
    names = [os.path.relpath(s.path, tmp_path) for s in sources]
    assert names == ["docs/a.jpg", "docs/b/deep/z.PNG", "docs/b/y.webp", "docs/c.pdf", "docs/scan.tiff", "single.bmp"]
    assert [s.stem for s in sources] == ["a", "z", "y", "c", "scan", "single"]  # files named twice are read once
    assert [s.kind for s in sources] == ["image", "image", "image", "pdf", "tiff", "image"]
    assert [name for name, _ in problems] == [str(listing.parent / "../missing.png"), str(tmp_path / "nope.png")]
    assert all("no such file or directory" in message for _, message in problems)


def test_discover_problems_and_unique_stems(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "empty").mkdir()
    for path in ["a/page.png", "b/page.png", "b/page.pdf"]:
        (tmp_path / path).write_bytes(b"x")
    empty_list = tmp_path / "empty.txt"
    empty_list.write_text("# nothing\n")
    image = Image.new("RGB", (4, 4))
    sources, problems = discover([tmp_path / "a", tmp_path / "b", tmp_path / "empty", f"@{empty_list}",
                                  f"@{tmp_path / 'gone.txt'}", image])
    assert [s.stem for s in sources] == ["page", "page-2", "page-3", "image-6"]
    assert sources[-1].image is image and sources[-1].kind == "image" and not sources[-1].paged
    messages = [m for _, m in problems]
    assert "no png, jpg, jpeg, webp, tif, tiff, bmp, pdf files in this directory" in messages[0]
    assert "names no inputs" in messages[1] and "no such list file" in messages[2]


def test_discover_skips_the_output_folder(tmp_path):
    (tmp_path / "in.png").write_bytes(b"x")
    (tmp_path / "out" / "in").mkdir(parents=True)
    (tmp_path / "out" / "in" / "page-0001.png").write_bytes(b"x")
    sources, problems = discover([tmp_path], exclude=tmp_path / "out")
    assert [s.path.name for s in sources] == ["in.png"] and not problems


def test_pdf_is_recognised_by_content(tmp_path):
    path = write_pdf(tmp_path / "scan.bin")
    assert _source(path).kind == "pdf"
    (tmp_path / "x.bin").write_bytes(b"GIF89a")
    assert _source(tmp_path / "x.bin").kind == "image"


# ---- pages ---------------------------------------------------------------------------------

def test_page_selection():
    assert parse_pages(None) is None and select_pages(None, 3) == [1, 2, 3]
    assert select_pages(parse_pages("1-5,8"), 10) == [1, 2, 3, 4, 5, 8]
    assert select_pages(parse_pages(" 8 , 2-3, 3 ,9-"), 10) == [2, 3, 8, 9, 10]
    assert select_pages(parse_pages([3, 1]), 3) == [1, 3]
    with pytest.raises(DsocrError, match="page 9 is beyond the document's 5 pages"):
        select_pages(parse_pages("1-2,4-9"), 5)
    with pytest.raises(DsocrError, match="page 2 is beyond the document's 1 page$"):
        select_pages(parse_pages("2"), 1)


@pytest.mark.parametrize("spec", ["", "0", "1-x", "3-1", "-3", "1,,2", "a", "1-2-3", "1.5"])
def test_malformed_page_selection(spec):
    with pytest.raises(DsocrError, match="invalid page selection"):
        parse_pages(spec)


@pytest.mark.parametrize("pages", [[], [0], ["1"], [True]])
def test_malformed_page_list(pages):
    with pytest.raises(DsocrError, match="invalid page selection"):
        parse_pages(pages)


# ---- opening -------------------------------------------------------------------------------

def test_pdf_pages_render_at_144_dpi_rgb(tmp_path):
    path = write_pdf(tmp_path / "doc.pdf")
    with open_document(_source(path)) as doc:
        assert doc.page_count == 3
        pages = [doc.page(n) for n in (1, 2, 3)]
        with pytest.raises(DsocrError, match="no page 4"):
            doc.page(4)
    assert [p.size for p in pages] == [(400, 600), (600, 400), (400, 600)]  # 2 px per point
    assert all(p.mode == "RGB" for p in pages)
    for page, color in zip(pages, COLORS):
        assert np.abs(np.asarray(page)[100, 100].astype(int) - color).max() <= 2
    with open_document(_source(path), dpi=72) as doc:
        assert doc.page(1).size == (200, 300)


def test_pages_without_background_render_on_white(tmp_path):
    import pypdfium2 as pdfium

    path = tmp_path / "blank.pdf"
    pdf = pdfium.PdfDocument.new()
    pdf.new_page(100, 50)
    pdf.save(str(path))
    pdf.close()
    with open_document(_source(path)) as doc:
        page = doc.page(1)
    assert page.mode == "RGB" and page.size == (200, 100) and np.asarray(page).min() == 255


def test_multipage_tiff(tmp_path):
    path = write_tiff(tmp_path / "scan.tif", count=3)
    with open_document(_source(path)) as doc:
        assert doc.page_count == 3
        assert np.asarray(doc.page(2))[5, 5].tolist() == list(COLORS[1])
        assert np.asarray(doc.page(1))[5, 5].tolist() == list(COLORS[0])
        assert doc.page(3).size == (120, 90)


def test_single_image_and_in_memory_image(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGBA", (30, 20), (1, 2, 3, 128)).save(path)
    with open_document(_source(path)) as doc:
        assert doc.page_count == 1 and doc.page(1).mode == "RGB" and doc.page(1).size == (30, 20)
    image = Image.new("L", (7, 5), 9)
    with open_document(Source("<image 1>", "image-1", image=image)) as doc:
        assert doc.page(1).mode == "RGB"


def test_encrypted_pdf_is_refused_with_its_name(tmp_path):
    import pypdfium2 as pdfium

    path = write_encrypted_pdf(tmp_path / "locked.pdf")
    with pdfium.PdfDocument(str(path), password="secret") as pdf:  # it is a real, readable encrypted PDF
        page = np.asarray(pdf[0].render(scale=2).to_pil())
        assert len(pdf) == 1 and page.min() < 100  # the decrypted text is drawn
    with pytest.raises(DsocrError, match=r"locked\.pdf: the PDF is encrypted \(password-protected\)"):
        open_document(_source(path))


@pytest.mark.parametrize("content, match", [
    (b"%PDF-1.4\ngarbage", "corrupt or unreadable PDF"),
    (b"", "corrupt or unreadable PDF"),
    (b"\x89PNG\r\n\x1a\nnot really", "corrupt or unreadable PDF"),
])
def test_corrupt_pdf_is_refused(tmp_path, content, match):
    path = tmp_path / "broken.pdf"
    path.write_bytes(content)
    with pytest.raises(DsocrError, match=rf"broken\.pdf: {match}") as info:
        open_document(_source(path))
    assert "\n" not in str(info.value)


def test_corrupt_images_fail_when_their_page_is_read(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with open_document(_source(bad)) as doc:
        with pytest.raises(DsocrError, match="bad.png"):
            doc.page(1)
    tiff = tmp_path / "bad.tiff"
    tiff.write_bytes(b"II*\0garbage")
    with pytest.raises(DsocrError, match="bad.tiff"):
        open_document(_source(tiff))
    with pytest.raises(DsocrError, match="gone.pdf: no such file"):
        open_document(_source(tmp_path / "gone.pdf"))
    with pytest.raises(DsocrError, match="dpi"):
        open_document(_source(bad), dpi=0)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_pdf_is_refused(tmp_path):
    path = write_pdf(tmp_path / "private.pdf")
    path.chmod(0)
    try:
        with pytest.raises(DsocrError, match="private.pdf"):
            open_document(_source(path))
    finally:
        path.chmod(0o600)


def test_pdf_that_cannot_be_opened_is_refused(tmp_path, monkeypatch):
    import pypdfium2 as pdfium

    path = write_pdf(tmp_path / "private.pdf")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(pdfium, "PdfDocument", denied)
    with pytest.raises(DsocrError, match=r"^.*private\.pdf: cannot open \(Permission denied\)$"):
        open_document(_source(path))
