"""Synthetic magazine and book pages that look like real scans (development set of issue 10).

`bench/synth.py` renders plain pages (one or two columns, a title, a picture);
this module adds what real magazine scans have and what broke the layout stage:

- 2-3 columns in horizontal *sections*: a picture with a centred caption that
  crosses the column gap splits the page into a section above and one below;
  the true reading order is column by column within each section;
- a halftone photograph bleeding to the page corner, and a dark scanner border
  (the scanner lid around a page smaller than the glass) that touches it;
- a running header (small caps) with the page number, and a footer;
- a drop cap, a letter-spaced title, small caps, ligature-heavy English text
  (fonts with OpenType `liga` set "fi"/"fl" as one glyph);
- scan degradations: uneven light, blur, noise, JPEG, bleed-through from the
  back side, low contrast, 150-400 dpi, and whole-page rotation by 90/180/270.

`render_magazine(spec)` returns a `synth.SynthPage` whose lines are in true
reading order with their baselines in the final image's coordinates, so the
same scoring (`bench/scoring.py`) applies.  A drop cap is its own one-letter
line (read before the lines it stands beside).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import cv2
import numpy as np
from PIL import Image, ImageDraw

from pero_worker.bench import synth, textgen

# English words with f-ligatures (fi, fl, ff, ffi, ffl), mixed into the text of ligature-heavy pages.
LIGATURE_WORDS = ["first", "office", "field", "flower", "difficult", "effect", "affair", "official", "fluent",
                  "final", "profile", "traffic", "coffee", "staff", "suffering", "offer", "flat", "floor",
                  "conflict", "influence", "efficient", "sufficient", "fifty", "fifteen", "figure", "finance",
                  "affluent", "baffled", "shuffle", "reflection", "flight", "fleet", "chiefly", "beneficial"]


@dataclass(frozen=True)
class MagazineSpec:
    """What a magazine page has; all sizes in inches or points like synth.PageSpec."""
    page: synth.PageSpec = synth.PageSpec()
    columns: int = 2
    header: bool = True
    footer: bool = True
    span_picture: bool = True      # picture + caption across the column gap between two sections
    corner_photo: bool = False     # halftone photo bleeding to the top-right corner of the page
    drop_cap: bool = False
    small_caps: bool = True        # running header and byline in small caps
    letter_spaced_title: bool = False
    ligatures: bool = True         # English text rich in fi/fl/ff words
    border_in: float = 0.0         # dark scanner border around the page (0 = none)
    orientation: int = 0           # 0, 90, 180, 270: the page is rotated by this much (counter-clockwise)
    bleed_through: float = 0.0     # 0..1 strength of the mirrored back side showing through
    contrast: float = 1.0          # 1 = ink 25 on paper 250; 0.4 = faint grey print on grey paper
    page_number: int = 17


# ----------------------------------------------------------------------------- text

def ligature_paragraph(rng: random.Random) -> str:
    """English sentences with about one word in four carrying an f-ligature."""
    out = []
    for _ in range(rng.randint(2, 5)):
        words = textgen.sentence(rng, "en").split(" ")
        for k in range(1, len(words)):
            if rng.random() < 0.25 and words[k].isalpha():
                words[k] = rng.choice(LIGATURE_WORDS)
        out.append(" ".join(words))
    return " ".join(out)


class _Typesetter:
    """Draws lines on the clean page and records them (reading order = call order)."""

    def __init__(self, spec: MagazineSpec, draw: ImageDraw.ImageDraw, ink: int):
        self.spec = spec
        self.draw = draw
        self.ink = ink
        self.lines: list[synth.SynthLine] = []

    def record(self, text: str, x0: float, x1: float, y: float, font, column: int) -> None:
        a, d = font.getmetrics()
        self.lines.append(synth.SynthLine(
            text=text, baseline=np.array([[x0, y], [x1, y]], dtype=np.float64),
            polygon=np.array([[x0, y - a], [x1, y - a], [x1, y + d], [x0, y + d]], dtype=np.float64),
            x_height=synth._x_height(font), column=column))

    def plain(self, text: str, font, x: float, y: float, column: int) -> float:
        self.draw.text((x, y), text, font=font, fill=self.ink, anchor="ls")
        x1 = x + font.getlength(text)
        self.record(text, x, x1, y, font, column)
        return x1

    def small_caps(self, text: str, family: str, size_px: int, x: float, y: float, column: int,
                   measure_only: bool = False) -> float:
        """Capitals full size, lower-case letters as capitals at 75 % (what the reader sees: capitals)."""
        big = synth.load_font(family, size_px)
        small = synth.load_font(family, max(6, int(size_px * 0.75)))
        pos = x
        for ch in text:
            f = small if ch.islower() else big
            if not measure_only:
                self.draw.text((pos, y), ch.upper(), font=f, fill=self.ink, anchor="ls")
            pos += f.getlength(ch.upper())
        if not measure_only:
            self.record(text.upper(), x, pos, y, big, column)
        return pos

    def spaced(self, text: str, font, x: float, y: float, tracking: float, column: int,
               measure_only: bool = False) -> float:
        """Letter-spaced text (`tracking` extra pixels after every letter)."""
        pos = x
        for ch in text:
            if not measure_only:
                self.draw.text((pos, y), ch, font=font, fill=self.ink, anchor="ls")
            pos += font.getlength(ch) + tracking
        end = pos - tracking
        if not measure_only:
            self.record(text, x, end, y, font, column)
        return end


# ----------------------------------------------------------------------------- pictures

def halftone_photo(rng: np.random.Generator, h: int, w: int, dpi: int) -> np.ndarray:
    """A photograph printed with an 85 lpi dot screen at 45 degrees (binarises into a dot texture)."""
    tone = synth._fake_photo(rng, h, w).astype(np.float32) / 255.0
    period = max(3.0, dpi / 85.0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xx + yy) / np.sqrt(2.0) * 2 * np.pi / period
    v = (xx - yy) / np.sqrt(2.0) * 2 * np.pi / period
    screen = (np.cos(u) * np.cos(v) + 1.0) / 2.0
    dots = np.where(tone < screen, 30.0, 245.0)
    return cv2.GaussianBlur(dots, (0, 0), max(0.5, period / 6)).astype(np.uint8)


# ----------------------------------------------------------------------------- page

@dataclass
class _Frame:
    x0: float
    x1: float
    y0: float
    y1: float
    column: int


def _flow(ts: _Typesetter, frames: list[_Frame], rng: random.Random, font, size_px: int, family: str,
          drop_cap: bool) -> None:
    """Fill frames in order with justified paragraphs (true reading order: frame by frame)."""
    spec = ts.spec
    pitch = spec.page.leading * size_px
    ascent, descent = font.getmetrics()
    fi = 0
    y = frames[0].y0 + ascent
    first = True
    while fi < len(frames):
        text = ligature_paragraph(rng) if spec.ligatures else textgen.paragraph(rng, lang=spec.page.language)
        if first and drop_cap:   # a drop cap stands beside three lines: its paragraph is long enough
            text += " " + " ".join(textgen.sentence(rng, "en") for _ in range(6))
        words = text.split(" ")
        cap_lines = 0
        cap_w = 0.0
        if first and drop_cap and len(words[0]) > 1:
            cap_font = synth.load_font(family, int(round(pitch * 2 + ascent)))
            letter, words[0] = words[0][0], words[0][1:]
            cap_w = cap_font.getlength(letter) + 0.3 * size_px
            f = frames[fi]
            cap_base = y + 2 * pitch
            ts.draw.text((f.x0, cap_base), letter, font=cap_font, fill=ts.ink, anchor="ls")
            ts.record(letter, f.x0, f.x0 + cap_font.getlength(letter), cap_base, cap_font, f.column)
            cap_lines = 3
        first = False
        indent = 0.0 if cap_lines else 1.5 * size_px
        i = 0
        while i < len(words) and fi < len(frames):
            f = frames[fi]
            if y + descent > f.y1:
                fi += 1
                if fi < len(frames):
                    y = frames[fi].y0 + ascent
                continue
            x0 = f.x0 + (cap_w if cap_lines > 0 else indent if i == 0 else 0.0)
            width = f.x1 - x0
            line = synth._break_lines(words[i:], font, width, 0.0)[0]
            i += len(line)
            last = i >= len(words)
            x1 = synth._draw_line(ts.draw, line, font, x0, y, width, not last, ts.ink)
            ts.record(" ".join(line), x0, x1, y, font, f.column)
            cap_lines -= 1
            y += pitch
        y += spec.page.paragraph_gap * pitch


def _columns(left: float, right: float, y0: float, y1: float, n: int, gap: float) -> list[_Frame]:
    w = (right - left - gap * (n - 1)) / n
    return [_Frame(left + k * (w + gap), left + k * (w + gap) + w, y0, y1, k) for k in range(n)]


def render_clean(spec: MagazineSpec) -> tuple[np.ndarray, list[synth.SynthLine], list[np.ndarray]]:
    """Typeset the magazine page on clean paper (unrotated, no border)."""
    p = spec.page
    rng = random.Random(p.seed)
    nrng = np.random.default_rng(p.seed)
    W, H = int(round(p.width_in * p.dpi)), int(round(p.height_in * p.dpi))
    page = Image.new("L", (W, H), 250)
    draw = ImageDraw.Draw(page)
    ts = _Typesetter(spec, draw, 25)
    size_px = max(6, int(round(p.font_pt * p.dpi / 72.0)))
    font = synth.load_font(p.font_family, size_px)
    pitch = p.leading * size_px
    margin = p.margin_in * p.dpi
    left, right, top, bottom = margin, W - margin, margin, H - margin
    pictures: list[np.ndarray] = []
    small_px = int(size_px * 0.85)
    if spec.header:
        hy = top - 0.45 * margin
        running = textgen.title(rng, "en")
        if spec.small_caps:
            ts.small_caps(running, p.font_family, small_px, left, hy, -1)
        else:
            ts.plain(running, synth.load_font(p.font_family, small_px), left, hy, -1)
        num = str(spec.page_number)
        nf = synth.load_font(p.font_family, small_px)
        if not spec.corner_photo:     # the photo bleeds over the header's right end
            ts.plain(num, nf, right - nf.getlength(num), hy, -1)
        draw.rectangle([left, hy + 0.4 * small_px, right, hy + 0.4 * small_px + max(1, p.dpi // 200)], fill=25)

    photo_box = None
    if spec.corner_photo:
        # Bleeds off the top-right corner: no white paper between the photo and the page edge.
        pw, ph = int((right - left) / spec.columns + margin), int(H * 0.28)
        photo_box = (W - pw, 0, W, ph)
        page.paste(Image.fromarray(halftone_photo(nrng, ph, pw, p.dpi)), (W - pw, 0))
        pictures.append(np.array([[W - pw, 0], [W, 0], [W, ph], [W - pw, ph]], dtype=np.float64))

    y = top + 0.3 * pitch
    tfont = synth.load_font(p.font_family, int(size_px * 2.2))
    title = textgen.title(rng, "en")
    track = 0.35 * size_px if spec.letter_spaced_title else 0.0
    title_right = right if photo_box is None else photo_box[0] - pitch
    while ts.spaced(title, tfont, 0, 0, track, -1, measure_only=True) > title_right - left and " " in title:
        title = title.rsplit(" ", 1)[0]
    tw = ts.spaced(title, tfont, 0, 0, track, -1, measure_only=True)
    y += tfont.getmetrics()[0]
    ts.spaced(title, tfont, (left + title_right - tw) / 2, y, track, -1)
    y += tfont.getmetrics()[1] + 0.6 * pitch
    byline = "by " + " ".join(w.capitalize() for w in rng.sample(textgen.WORDS["en"][150:], 2))
    bw = ts.small_caps(byline, p.font_family, small_px, 0, 0, -1, measure_only=True) if spec.small_caps \
        else synth.load_font(p.font_family, small_px).getlength(byline)
    y += small_px
    if spec.small_caps:
        ts.small_caps(byline, p.font_family, small_px, (left + title_right - bw) / 2, y, -1)
    else:
        ts.plain(byline, synth.load_font(p.font_family, small_px), (left + title_right - bw) / 2, y, -1)
    y += 1.5 * pitch

    footer_h = 2.0 * small_px if spec.footer else 0.0
    body_bottom = bottom - footer_h
    gap = p.column_gap_in * p.dpi
    frames: list[_Frame] = []
    if spec.span_picture:
        pic_h = int((body_bottom - y) * 0.26)
        sec_a = y + (body_bottom - y - pic_h) * 0.4
        frames += _columns(left, right, y, sec_a, spec.columns, gap)
        _limit_beside_photo(frames, photo_box, pitch)
        _flow(ts, frames, rng, font, size_px, p.font_family, spec.drop_cap)
        pw = int((right - left) * 0.62)
        px = int((left + right - pw) / 2)
        py = int(sec_a + 0.5 * pitch)
        photo = halftone_photo(nrng, pic_h, pw, p.dpi) if nrng.random() < 0.5 else synth._fake_photo(nrng, pic_h, pw)
        page.paste(Image.fromarray(photo), (px, py))
        pictures.append(np.array([[px, py], [px + pw, py], [px + pw, py + pic_h], [px, py + pic_h]], float))
        cfont = synth.load_font(p.font_family, int(size_px * 0.9))
        caption = textgen.sentence(rng, "en")
        while cfont.getlength(caption) > pw and " " in caption:
            caption = caption.rsplit(" ", 1)[0]
        cy = py + pic_h + 0.4 * pitch + cfont.getmetrics()[0]
        ts.plain(caption, cfont, (left + right - cfont.getlength(caption)) / 2, cy, -1)
        sec_b = cy + 1.4 * pitch
        frames_b = _columns(left, right, sec_b, body_bottom, spec.columns, gap)
        _flow(ts, frames_b, rng, font, size_px, p.font_family, False)
    else:
        frames += _columns(left, right, y, body_bottom, spec.columns, gap)
        _limit_beside_photo(frames, photo_box, pitch)
        _flow(ts, frames, rng, font, size_px, p.font_family, spec.drop_cap)
    if spec.footer:
        ff = synth.load_font(p.font_family, small_px)
        fy = bottom + 0.5 * margin
        text = f"{textgen.title(rng, 'en')} {2024 - rng.randint(0, 80)}"
        ts.plain(text, ff, left, fy, -1)
        num = str(spec.page_number)
        ts.plain(num, ff, right - ff.getlength(num), fy, -1)
    return np.asarray(page), ts.lines, pictures


def _limit_beside_photo(frames: list[_Frame], photo_box: tuple[int, int, int, int] | None, pitch: float) -> None:
    """Columns under the corner photo start below it."""
    if photo_box is None:
        return
    for f in frames:
        if f.x1 > photo_box[0]:
            f.y0 = max(f.y0, photo_box[3] + pitch)


# ----------------------------------------------------------------------------- scan

def _bleed(clean: np.ndarray, strength: float, seed: int) -> np.ndarray:
    """The back side showing through: another page, mirrored, blurred and faint."""
    back, _, _ = synth.render_clean(replace(synth.PageSpec(), dpi=100, seed=seed + 99))
    back = cv2.resize(np.fliplr(back), (clean.shape[1], clean.shape[0]), interpolation=cv2.INTER_LINEAR)
    back = cv2.GaussianBlur(back.astype(np.float32), (0, 0), 1.5)
    return 255.0 - strength * 0.35 * (255.0 - back)


def _with_border(img: np.ndarray, border_px: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The page on a dark scanner lid, shifted and slightly turned: border of uneven width on all sides."""
    h, w = img.shape
    H, W = h + 2 * border_px, w + 2 * border_px
    lid = np.clip(rng.normal(35, 8, (H, W)), 0, 255).astype(np.float32)
    ox = int(rng.integers(border_px // 3, 2 * border_px - border_px // 3 + 1))
    oy = int(rng.integers(border_px // 3, 2 * border_px - border_px // 3 + 1))
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), float(rng.uniform(-0.6, 0.6)), 1.0)
    m[:, 2] += (ox, oy)
    page = cv2.warpAffine(img.astype(np.float32), m, (W, H), flags=cv2.INTER_LINEAR, borderValue=-1)
    inside = cv2.warpAffine(np.ones((h, w), np.float32), m, (W, H), flags=cv2.INTER_NEAREST, borderValue=0)
    # The page edge casts a shadow on the lid side: a soft dark seam.
    out = np.where(inside > 0.5, page, lid)
    return out, m


def _rotate_quarter(img: np.ndarray, orientation: int) -> tuple[np.ndarray, np.ndarray]:
    """Rotate the final image counter-clockwise by 0/90/180/270 and return the point map."""
    h, w = img.shape[:2]
    k = (orientation // 90) % 4
    out = np.ascontiguousarray(np.rot90(img, k))
    maps = {0: [[1, 0, 0], [0, 1, 0]],
            1: [[0, 1, 0], [-1, 0, w - 1]],
            2: [[-1, 0, w - 1], [0, -1, h - 1]],
            3: [[0, -1, h - 1], [1, 0, 0]]}
    return out, np.array(maps[k], dtype=np.float64)


def _compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Affine map a after b (2x3 each)."""
    a3 = np.vstack([a, [0, 0, 1]])
    b3 = np.vstack([b, [0, 0, 1]])
    return (a3 @ b3)[:2]


def render_magazine(spec: MagazineSpec) -> synth.SynthPage:
    """The scanned magazine page with its ground truth in final image coordinates."""
    p = spec.page
    clean, lines, pictures = render_clean(spec)
    rng = np.random.default_rng(p.seed + 31)
    f = clean.astype(np.float32)
    if spec.bleed_through > 0:
        f = np.minimum(f, _bleed(clean, spec.bleed_through, p.seed))
    if spec.contrast != 1.0:
        paper = 250 - 40 * (1 - spec.contrast)
        f = paper - (paper - f) * spec.contrast
    m = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    if spec.border_in > 0:
        f, m = _with_border(f, int(spec.border_in * p.dpi), rng)
    img, m2 = synth.degrade(np.clip(f, 0, 255).astype(np.uint8), replace(p, jpeg_quality=None, binary=False))
    m = _compose(m2, m)
    q = p.jpeg_quality
    img, m3 = _rotate_quarter(img, spec.orientation)
    m = _compose(m3, m)
    if p.binary:
        img = np.where(img < 128, 0, 255).astype(np.uint8)
    elif q:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(q)])
        img = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    for line in lines:
        line.baseline = synth._apply(m, line.baseline)
        line.polygon = synth._apply(m, line.polygon)
    return synth.SynthPage(image=img, lines=lines, spec=p, picture_boxes=[synth._apply(m, b) for b in pictures])


# ----------------------------------------------------------------------------- the development set

PAGE_CLASSES = ("book", "magazine-2col", "magazine-3col", "border-photo", "rotated", "degraded")


def dev_spec(page_class: str, index: int, family: str, seed: int) -> MagazineSpec:
    """One page of a class; `index` varies resolution and details within the class."""
    rng = random.Random(seed * 1009 + index)
    dpi = [150, 200, 300, 400][(index + seed) % 4] if page_class != "degraded" else [150, 200, 300][index % 3]
    size = dict(width_in=8.27, height_in=11.69) if dpi <= 300 else dict(width_in=6.0, height_in=8.5)
    base = synth.PageSpec(dpi=dpi, font_family=family, font_pt=rng.choice([9, 10, 11]) if dpi > 150 else 11,
                          leading=rng.uniform(1.2, 1.35), margin_in=0.7, column_gap_in=0.25,
                          seed=seed + 17 * index, **size)
    base = synth.scanned(base, rng)
    common = dict(page=base, drop_cap=rng.random() < 0.5, letter_spaced_title=rng.random() < 0.5)
    if page_class == "book":
        spec = MagazineSpec(columns=1, span_picture=False, small_caps=rng.random() < 0.5, **common)
    elif page_class == "magazine-2col":
        spec = MagazineSpec(columns=2, **common)
    elif page_class == "magazine-3col":
        spec = MagazineSpec(columns=3, **common)
    elif page_class == "border-photo":
        spec = MagazineSpec(columns=2, corner_photo=True, span_picture=rng.random() < 0.5,
                            border_in=rng.uniform(0.15, 0.4), **common)
    elif page_class == "rotated":
        spec = MagazineSpec(columns=rng.choice([1, 2]), span_picture=False, orientation=[90, 180, 270][index % 3],
                            **common)
    elif page_class == "degraded":
        spec = MagazineSpec(columns=2, bleed_through=rng.uniform(0.5, 1.0), contrast=rng.uniform(0.35, 0.6),
                            **{**common, "page": replace(base, illumination=rng.uniform(0.3, 0.5),
                                                         noise_sigma=rng.uniform(6, 12))})
    else:
        raise ValueError(f"unknown page class {page_class!r} (known: {', '.join(PAGE_CLASSES)})")
    return spec


def to_upright(points: np.ndarray, shape: tuple[int, int], orientation: int) -> np.ndarray:
    """Points of a page image turned by `orientation` (as rendered) mapped to the page turned back upright
    (np.rot90 clockwise by the same angle), e.g. to score baselines as horizontal lines."""
    H, W = shape
    k = (orientation // 90) % 4
    maps = {0: [[1, 0, 0], [0, 1, 0]], 1: [[0, -1, H - 1], [1, 0, 0]],
            2: [[-1, 0, W - 1], [0, -1, H - 1]], 3: [[0, 1, 0], [-1, 0, W - 1]]}
    return synth._apply(np.array(maps[k], dtype=np.float64), np.asarray(points, dtype=np.float64))
