"""Render a Rich ``Console.save_svg`` file to PNG with Pillow (no browser / cairo needed).

Reads the SVG's cell grid (text x/y in multiples of the char width / line height, CSS classes for colour and weight,
background rects) and redraws each character at its cell with DejaVu Sans Mono, keeping Rich's colours and window chrome.
usage: python deploy/svg_to_png.py IN.svg OUT.png [scale]   (e.g. from `copulse live --once --svg FILE`)
"""
import html
import re
import sys

from PIL import Image, ImageDraw, ImageFont

FONTS = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono{}.ttf"
CHAR_W, LINE_H = 12.2, 24.4  # Rich's SVG cell at font-size 20


def main(src: str, dst: str, scale: float = 0.8) -> None:
    svg = open(src, encoding="utf-8").read()
    vw, vh = (float(v) for v in re.search(r'viewBox="0 0 ([\d.]+) ([\d.]+)"', svg).groups())
    styles = {}
    for name, body in re.findall(r"\.terminal-\d+-(r\d+) \{([^}]*)\}", svg):
        fill = re.search(r"fill: (#[0-9a-f]{6})", body)
        styles[name] = (fill.group(1) if fill else "#c5c8c6", "bold" in body, "italic" in body)
    ox, oy = (float(v) for v in re.search(r'<g transform="translate\(([\d.]+), ([\d.]+)\)" clip-path', svg).groups())
    s = scale
    img = Image.new("RGB", (round(vw * s), round(vh * s)), "#ffffff")
    d = ImageDraw.Draw(img)
    fs = round(20 * s)
    fonts = {(b, i): ImageFont.truetype(FONTS.format({(0, 0): "", (1, 0): "-Bold", (0, 1): "-Oblique",
                                                      (1, 1): "-BoldOblique"}[(b, i)]), fs)
             for b in (0, 1) for i in (0, 1)}
    # window frame
    d.rounded_rectangle([s, s, (vw - 1) * s, (vh - 1) * s], radius=round(8 * s), fill="#292929",
                        outline="#6b6b6b", width=1)
    for cx, colour in zip((0, 22, 44), ("#ff5f57", "#febc2e", "#28c840")):
        x, y, r = (26 + cx) * s, 22 * s, 7 * s
        d.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    title = re.search(r'class="terminal-\d+-title"[^>]*x="([\d.]+)" y="([\d.]+)">([^<]*)<', svg)
    tfont = ImageFont.truetype(FONTS.format("-Bold"), round(18 * s))
    d.text((float(title.group(1)) * s, float(title.group(2)) * s), html.unescape(title.group(3)),
           font=tfont, fill="#c5c8c6", anchor="ms")
    for fill, x, y, w, h in re.findall(
            r'<rect fill="(#[0-9a-f]{6})" x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)" '
            r'shape-rendering', svg):
        x, y, w, h = (float(v) for v in (x, y, w, h))
        d.rectangle([(ox + x) * s, (oy + y) * s, (ox + x + w) * s - 1, (oy + y + h) * s - 1], fill=fill)
    for cls, x, y, text in re.findall(
            r'<text class="terminal-\d+-(r\d+)" x="([\d.]+)" y="([\d.]+)" textLength="[\d.]+"[^>]*>([^<]*)</text>',
            svg):
        colour, bold, italic = styles[cls]
        font = fonts[(int(bold), int(italic))]
        col0 = round(float(x) / CHAR_W)
        base = (oy + float(y)) * s
        row_top = base - 20 * s + 1  # Rich's text baseline sits at cell top + ~19.5
        for k, ch in enumerate(html.unescape(text).replace("\xa0", " ")):
            if ch in " \n":
                continue
            left = (ox + (col0 + k) * CHAR_W) * s
            if ch == "█":
                d.rectangle([left, row_top, left + CHAR_W * s, row_top + LINE_H * s - 2], fill=colour)
            else:
                d.text((left, base), ch, font=font, fill=colour, anchor="ls")
    img.save(dst, optimize=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(float(a) for a in sys.argv[3:]))
