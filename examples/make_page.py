"""Draw the example document page shipped in the repository (examples/page.png)."""

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 1000, 1300
TEXT = (
    "DeepSeek-OCR compresses long textual contexts into a small number of vision tokens. "
    "A page rendered at 1024 x 1024 pixels becomes 256 tokens after the 16x convolutional "
    "compressor, and the decoder reads the text back from them."
)


def wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + [line]


def main() -> None:
    page = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(page)
    title, body = ImageFont.load_default(size=44), ImageFont.load_default(size=24)
    draw.text((80, 80), "Contexts Optical Compression", font=title, fill="black")
    y = 170
    for paragraph in range(3):
        for line in wrap(draw, TEXT, body, WIDTH - 160):
            draw.text((80, y), line, font=body, fill="black")
            y += 34
        y += 24
    rows = [("Mode", "Size", "Tokens"), ("Tiny", "512", "64"), ("Small", "640", "100"), ("Base", "1024", "256"), ("Large", "1280", "400")]
    top = y + 20
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            x0, y0 = 80 + c * 280, top + r * 50
            draw.rectangle([x0, y0, x0 + 280, y0 + 50], outline="black", width=2)
            draw.text((x0 + 14, y0 + 12), cell, font=body, fill="black")
    page.save(Path(__file__).with_name("page.png"), optimize=True)


if __name__ == "__main__":
    main()
