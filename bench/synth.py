"""Synthetic scanned pages with known text and line positions.

Used by the layout tests, by `bench/cer.py` (held-out evaluation pages) and by
`examples/make_examples.py`.  A page is typeset with PIL (greedy line
breaking, optional justification, one or two columns, optional title, rule and
picture), then degraded like a scan (uneven light, rotation, blur, noise,
binarisation or JPEG).  Every rendered line is recorded in reading order with
its baseline and box transformed into the final image coordinates, so both
OCR text and layout geometry can be scored.
"""

from __future__ import annotations

import functools
import random
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pero_worker.bench import textgen

# ----------------------------------------------------------------------------- fonts

@functools.cache
def font_file(family: str) -> str | None:
    """Path of the regular face of a font family known to fontconfig, or None."""
    for style in ("Regular", "Book", "Roman", "Medium", ""):
        pattern = f":family={family}" + (f":style={style}" if style else "")
        try:
            out = subprocess.run(["fc-list", pattern, "file"], capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        files = sorted(line.split(":")[0].strip() for line in out.splitlines() if line.strip())
        files = [f for f in files if f.lower().endswith((".ttf", ".otf"))]
        if files:
            return files[0]
    return None


def available_families(candidates: list[str]) -> list[str]:
    return [f for f in candidates if font_file(f)]


@functools.lru_cache(maxsize=64)
def load_font(family: str, size_px: int) -> ImageFont.FreeTypeFont:
    """The family at a pixel size; Pillow's bundled font when the family is missing,
    so that tests run on a machine without any font package."""
    path = font_file(family)
    if path:
        return ImageFont.truetype(path, size_px)
    return ImageFont.load_default(size=size_px)


def read_held_out_fonts(path: Path) -> list[str]:
    """Font families listed one per line (# comments allowed) in HELD_OUT_FONTS.txt."""
    if not path.is_file():
        return []
    families = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            families.append(line)
    return families


# ----------------------------------------------------------------------------- data

@dataclass(frozen=True)
class PageSpec:
    dpi: int = 300
    width_in: float = 8.27           # A4
    height_in: float = 11.69
    margin_in: float = 0.8
    font_family: str = "DejaVu Serif"
    font_pt: float = 11.0
    leading: float = 1.3             # line pitch / font size
    columns: int = 1
    column_gap_in: float = 0.3
    justify: bool = True
    title: bool = False
    rule: bool = False
    picture: bool = False
    paragraph_gap: float = 0.5       # extra space between paragraphs, in line pitches
    max_paragraphs: int = 100
    rotation_deg: float = 0.0
    blur_sigma: float = 0.0
    noise_sigma: float = 0.0
    illumination: float = 0.0        # depth of the light gradient, 0..1
    jpeg_quality: int | None = None
    binary: bool = False
    language: str | None = None      # None: each paragraph picks one
    seed: int = 0


@dataclass
class SynthLine:
    text: str
    baseline: np.ndarray      # 2x2 (x, y): left and right ends, final image coordinates
    polygon: np.ndarray       # 4x2 box from ascent to descent, final image coordinates
    x_height: float
    column: int               # -1 for full-width lines (title)


@dataclass
class SynthPage:
    image: np.ndarray         # uint8 greyscale
    lines: list[SynthLine]    # reading order
    spec: PageSpec
    picture_boxes: list[np.ndarray] = field(default_factory=list)  # 4x2 polygons, final coordinates

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)


# ----------------------------------------------------------------------------- typesetting

def _break_lines(words: list[str], font: ImageFont.FreeTypeFont, width: float, indent: float) -> list[list[str]]:
    space = font.getlength(" ")
    lines: list[list[str]] = []
    current: list[str] = []
    used = indent
    for w in words:
        wl = font.getlength(w)
        if current and used + space + wl > width:
            lines.append(current)
            current, used = [w], wl
        else:
            used += (space if current else 0) + wl
            current.append(w)
    if current:
        lines.append(current)
    return lines


def _draw_line(draw: ImageDraw.ImageDraw, words: list[str], font, x: float, y: float, width: float,
               justify: bool, ink: int) -> float:
    """Draw words with baseline at y; return the right end of the drawn text."""
    space = font.getlength(" ")
    lengths = [font.getlength(w) for w in words]
    gap = space
    if justify and len(words) > 1:
        gap = (width - sum(lengths)) / (len(words) - 1)
        gap = min(gap, space * 3)
    pos = x
    for w, wl in zip(words, lengths):
        draw.text((pos, y), w, font=font, fill=ink, anchor="ls")
        pos += wl + gap
    return pos - gap


def _fake_photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth random tones with a few hard shapes: binarises into a messy blob, like a real photo."""
    field_ = rng.random((max(2, h // 40), max(2, w // 40))).astype(np.float32)
    field_ = cv2.resize(field_, (w, h), interpolation=cv2.INTER_CUBIC)
    field_ = cv2.GaussianBlur(field_, (0, 0), 3)
    img = 40 + 170 * (field_ - field_.min()) / max(1e-6, float(field_.max() - field_.min()))
    for _ in range(6):
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(h // 12 + 1, h // 4 + 2))
        cv2.circle(img, (cx, cy), r, float(rng.integers(20, 230)), -1)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def render_clean(spec: PageSpec) -> tuple[np.ndarray, list[SynthLine], list[np.ndarray]]:
    """Typeset the page on clean paper; returns image, lines, picture boxes (unrotated)."""
    rng = random.Random(spec.seed)
    nrng = np.random.default_rng(spec.seed)
    W = int(round(spec.width_in * spec.dpi))
    H = int(round(spec.height_in * spec.dpi))
    paper, ink = 250, 25
    page = Image.new("L", (W, H), paper)
    draw = ImageDraw.Draw(page)
    size_px = max(6, int(round(spec.font_pt * spec.dpi / 72.0)))
    font = load_font(spec.font_family, size_px)
    pitch = spec.leading * size_px
    ascent, descent = font.getmetrics()
    margin = spec.margin_in * spec.dpi
    left, right = margin, W - margin
    top, bottom = margin, H - margin
    lines: list[SynthLine] = []
    pictures: list[np.ndarray] = []

    def add_line(text: str, x0: float, x1: float, y: float, f, column: int) -> None:
        a, d = f.getmetrics()
        lines.append(SynthLine(
            text=text,
            baseline=np.array([[x0, y], [x1, y]], dtype=np.float64),
            polygon=np.array([[x0, y - a], [x1, y - a], [x1, y + d], [x0, y + d]], dtype=np.float64),
            x_height=_x_height(f), column=column))

    y = top
    if spec.title:
        tfont = load_font(spec.font_family, int(size_px * 2))
        ttext = textgen.title(rng, spec.language)
        while tfont.getlength(ttext) > right - left and " " in ttext:
            ttext = ttext.rsplit(" ", 1)[0]
        tw = tfont.getlength(ttext)
        ta, td = tfont.getmetrics()
        y += ta
        x0 = (left + right - tw) / 2
        draw.text((x0, y), ttext, font=tfont, fill=ink, anchor="ls")
        add_line(ttext, x0, x0 + tw, y, tfont, -1)
        y += td + pitch * 0.8
    if spec.rule:
        thick = max(2, spec.dpi // 100)
        draw.rectangle([left, y, right, y + thick], fill=ink)
        y += thick + pitch * 1.2

    ncol = max(1, spec.columns)
    gap = spec.column_gap_in * spec.dpi
    col_w = (right - left - gap * (ncol - 1)) / ncol
    col_x = [left + i * (col_w + gap) for i in range(ncol)]
    body_top = y

    # Picture: at the top of the last column (or of the page with one column).
    pic_box = None
    if spec.picture:
        ph = int((bottom - body_top) * 0.3)
        pw = int(col_w if ncol > 1 else col_w * 0.7)
        px = int(col_x[-1] + (col_w - pw) / 2)
        py = int(body_top)
        page.paste(Image.fromarray(_fake_photo(nrng, ph, pw)), (px, py))
        pic_box = (px, py, px + pw, py + ph)
        pictures.append(np.array([[px, py], [px + pw, py], [px + pw, py + ph], [px, py + ph]], dtype=np.float64))

    col = 0
    y = body_top + ascent
    if pic_box and ncol == 1:
        y = pic_box[3] + pitch + ascent

    def column_start(c: int) -> float:
        if pic_box and c == ncol - 1 and ncol > 1:
            return pic_box[3] + pitch + ascent
        return body_top + ascent

    y = column_start(0) if ncol > 1 else y
    done = False
    for _ in range(spec.max_paragraphs):
        words = textgen.paragraph(rng, lang=spec.language).split(" ")
        indent = 1.5 * size_px
        broken = _break_lines(words, font, col_w, indent)
        for i, lw in enumerate(broken):
            if y + descent > bottom:
                col += 1
                if col >= ncol:
                    done = True
                    break
                y = column_start(col)
            x0 = col_x[col] + (indent if i == 0 else 0)
            last = i == len(broken) - 1
            x1 = _draw_line(draw, lw, font, x0, y, col_x[col] + col_w - x0, spec.justify and not last, ink)
            add_line(" ".join(lw), x0, x1, y, font, col if ncol > 1 else 0)
            y += pitch
        if done:
            break
        y += spec.paragraph_gap * pitch
    # Drop a line cut by the page end in mid-paragraph: it was not drawn.
    return np.asarray(page), lines, pictures


def _x_height(font) -> float:
    bbox = font.getbbox("x", anchor="ls")
    return float(-bbox[1])


# ----------------------------------------------------------------------------- degradation

def _illumination(shape: tuple[int, int], depth: float, rng: np.random.Generator) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (xx / w - 0.5) * np.cos(angle) + (yy / h - 0.5) * np.sin(angle)
    ramp = (ramp - ramp.min()) / max(1e-6, float(ramp.max() - ramp.min()))
    cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
    radial = np.sqrt(((xx - cx) / w) ** 2 + ((yy - cy) / h) ** 2)
    radial = radial / max(1e-6, float(radial.max()))
    return 1.0 - depth * (0.7 * ramp + 0.3 * radial)


def _rotate(img: np.ndarray, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle_deg, 1.0)
    out = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out, m


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def degrade(img: np.ndarray, spec: PageSpec) -> tuple[np.ndarray, np.ndarray]:
    """Scan-like degradation; returns the image and the 2x3 affine map applied to coordinates."""
    rng = np.random.default_rng(spec.seed + 7919)
    f = img.astype(np.float32)
    m = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    if spec.rotation_deg:
        f, m = _rotate(f, spec.rotation_deg)
    if spec.blur_sigma > 0:
        f = cv2.GaussianBlur(f, (0, 0), spec.blur_sigma)
    if spec.illumination > 0:
        f = f * _illumination(f.shape, spec.illumination, rng)
    if spec.noise_sigma > 0:
        f = f + rng.normal(0, spec.noise_sigma, f.shape).astype(np.float32)
    out = np.clip(f, 0, 255).astype(np.uint8)
    if spec.binary:
        # A scanner's 1-bit mode: a fixed threshold (photographs become solid blobs).
        out = np.where(out < 128, 0, 255).astype(np.uint8)
    elif spec.jpeg_quality:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(spec.jpeg_quality)])
        out = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    return out, m


def render_page(spec: PageSpec) -> SynthPage:
    clean, lines, pictures = render_clean(spec)
    img, m = degrade(clean, spec)
    for line in lines:
        line.baseline = _apply(m, line.baseline)
        line.polygon = _apply(m, line.polygon)
    pictures = [_apply(m, p) for p in pictures]
    return SynthPage(image=img, lines=lines, spec=spec, picture_boxes=pictures)


def scanned(spec: PageSpec, rng: random.Random) -> PageSpec:
    """The spec with a random but moderate scan degradation."""
    return replace(spec,
                   rotation_deg=rng.uniform(-1.5, 1.5),
                   blur_sigma=rng.uniform(0.3, 0.9) * spec.dpi / 300,
                   noise_sigma=rng.uniform(3, 10),
                   illumination=rng.uniform(0.1, 0.35),
                   jpeg_quality=None if spec.binary else rng.randint(45, 80))
