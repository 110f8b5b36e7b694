#!/usr/bin/env python3
"""Synthetic text lines for training the bundled line-OCR model.

Each sample is made the way a real line reaches the OCR at run time:

1. a text line (plus, often, parts of its neighbours above and below) is drawn
   with PIL on a page-like grey canvas, in a random font, size, ink and paper;
2. the canvas is degraded like a scan (rotation, horizontal scaling, blur,
   paper texture, noise, binarisation, low resolution, JPEG artefacts);
3. the baseline and the two line heights are computed from the rendered ink of
   the line by the layout stage's own `line_geometry` (worker/layout/geometry.py),
   with small random errors on top;
4. the line is cut out by pero-ocr's own `EngineLineCropper` (40 px high), so
   the text sits in the crop exactly as in `PageParser`'s LINE_CROPPER step.

Text comes from `TextGenerator`: pseudo-words built from the letter statistics
of many European languages, a few real function words, numbers, dates,
prices, punctuation, brackets and the typographic quotes and dashes of the
charset. No corpus is downloaded.

    python pero-ocr/render_lines.py --font-dir .fonts --count 32 --out /tmp/lines   # writes PNGs + labels
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import random
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

from pero_worker.training.charset import CHARACTERS

LINE_HEIGHT = 40        # px, the crop height the network reads (ocr_engine.json line_px_height)
LINE_SCALE = 1.25       # LINE_CROPPER LINE_SCALE: how far above/below the heights the crop reaches
INTERP = 2              # LINE_CROPPER INTERP (polynomial degree of the baseline)
PADDING = 32            # px of black canvas pero-ocr puts left (and at least right) of each line

# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Language:
    """Letter statistics of one language: repeated letters weigh more."""
    vowels: str
    consonants: str
    clusters: tuple[str, ...]
    words: tuple[str, ...]
    quotes: tuple[tuple[str, str], ...]


def _lang(vowels: str, consonants: str, clusters: str, words: str, quotes: str) -> Language:
    q = tuple((p[0], p[1]) for p in quotes.split())
    return Language(vowels.replace(" ", ""), consonants.replace(" ", ""),
                    tuple(clusters.split()), tuple(words.split()), q)


LANGUAGES: dict[str, Language] = {
    "en": _lang("eeeeeaaaaoooiiiuuy", "ttttnnnsssrrrhhhlllddcccmmwwffggyppbbvkjxqz",
                "th sh ch st tr pr wh ng nd ck ll ss",
                "the of and to in is that for it as with was on be by this are or from at which not but have an",
                "“” ‘’ \"\""),
    "de": _lang("eeeeeeaaaiiiuuoooääöüü", "nnnnrrrrsssstttthhhddllllggcccmmbbwwffkkzzppvjß",
                "sch ch st sp ck tz pf ng nk",
                "der die und in den von zu das mit sich des auf für ist im dem nicht ein eine als auch es an werden "
                "aus er hat daß sie nach über",
                "„“ ‚‘ »« \"\""),
    "fr": _lang("eeeeeeaaaaiiiiuuuoooéééèèêàâîïôûùëüÿœæ", "ssssnnnnrrrrttttllllddccmmppvvqqgghhbbffjxzç",
                "ch qu gn ll ss tr pr br",
                "le de la et les des en un une du est que pour qui dans par sur pas au avec ce il elle ne se sont aux "
                "été être l’on d’un qu’il",
                "«» “” \"\""),
    "es": _lang("eeeeaaaaoooooiiiuuuáéíóúü", "ssssnnnnrrrrllllddddttccmmppbbggvvyyqqhhffzjñx",
                "ch ll rr qu gu br tr pr",
                "de la que el en y los del se las por un para con no una su al es lo como más pero sus le ya o este sí",
                "«» “” \"\""),
    "pt": _lang("aaaaeeeeooooiiiuuãõáéíóúâêôàç", "ssssrrrrnnnnddddmmmttccllppvvggqqhbbfzjx",
                "nh lh ch qu gu tr pr br",
                "de a o que e do da em um para é com não uma os no se na por mais as dos como mas foi ao ele das",
                "“” «» \"\""),
    "it": _lang("eeeeaaaaiiiiooooouuuàèéìòù", "nnnnrrrrttttllllccssssddppmmvvggzzbbffhq",
                "ch gh gl gn sc zz tt ll ss",
                "di e il la che in a per un è non una del con le si da al dei come più anche nel sono ma",
                "«» “” \"\""),
    "cs": _lang("aaaeeeoooiiiuuyáááéííýůúěě", "nnnsssttttvvvpppkkkrrrllllddmmmjjzzcchbřřžžššččďťňgf",
                "st pr př ch sk kr tr ml zv sp",
                "a se na že v je to s z do o by i k ve pro jako jsou tak ale po jeho od při bylo jsem však již "
                "který jen",
                "„“ ‚‘ »« \"\""),
    "sk": _lang("aaaeeeoooiiiuuyáéíóúýäô", "nnnsssttttvvvpppkkkrrrllllddmmmjjzzcchbžžššččďťňľĺŕgf",
                "st pr ch sk kr tr dz dž",
                "a v sa na je že to s z do o by i k ako pre ale po od pri bolo som už ktorý len tak",
                "„“ ‚‘ \"\""),
    "pl": _lang("aaaeeeooiiiyyuuąęóąę", "nnnrrrzzzwwwssscccttkkkdddpppmmmlllłłjjbbggśćńźżhf",
                "sz cz rz ch dz dź dż prz trz",
                "i w nie na się z że do to jest o jak a po co tak za od ale przez przy już być który jego",
                "„” «» \"\""),
    "hu": _lang("eeeeaaaaiiiooouuáááéééíóöőúüű", "ttttnnnnllllkkkksssszzzrrrrmmmggyyddvvbbhhjjppcf",
                "sz gy ny ly ty zs cs",
                "a az és hogy nem is egy meg ez de csak már van volt még el mint ki fel ha",
                "„” »« \"\""),
    "ro": _lang("aaaaeeeeiiiuuuooăăîâ", "rrrrnnnnttttccccsssllllmmmppddvvșşțţbbgzfhj",
                "ch gh st tr pr",
                "de și în a la cu o pe nu un că se din este mai care pentru sau ca au fost",
                "„” «» \"\""),
    "hr": _lang("aaaaeeeiiiooouu", "jjjnnnrrrsssttvvvkkklllmmmdddpppzzgggbbcččšžćđhf",
                "st pr dj lj nj dž",
                "i je u na se da su za od a kao ne s o to iz što bi ili sam već",
                "„“ »« \"\""),
    "lv": _lang("aaaaeeeiiiuuuoāāēēīīū", "sssttttrrrnnnkkkllllmmmdddpppvvvjjbbggzzšžčļņķģcfh",
                "st sk kr pr tr",
                "un ir ar par no uz kas ka bet arī tas vai lai tā to bija",
                "„“ «» \"\""),
    "lt": _lang("aaaaiiiieeeooouuuąęėįųū", "sssstttrrrnnnkkkllllmmmdddpppvvvjjbbggzzšžčcfh",
                "st sk kr pr tr dž",
                "ir yra kad su į o bet ar iš tai jo kaip jis buvo į",
                "„“ «» \"\""),
    "tr": _lang("aaaaeeeeıııiiiuuüüööo", "nnnnrrrrllllkkkkddddmmmmyyysssşşttbbzzççğğggcvpfh",
                "rt nt nd st",
                "ve bir bu da de için ile çok daha olan gibi ama İstanbul Işık İzmir",
                "“” «» \"\""),
    "nordic": _lang("eeeeaaaaiiiooouuyyåååæææøøøäöé", "nnnrrrttttsssslllldddkkkggmmvvhhffbbppjj",
                "sk st kk tt nn ll",
                "og i det er en til at på som med for av har de ikke och att är för den",
                "»« ”” „“ \"\""),
    "is": _lang("aaaaeeeiiiuuuooóáíúéýæöy", "nnnrrrssstttllldddggghhhkkkmmmvvfþþððbpj",
                "st hv fj",
                "og að í á sem er það við um til en hann var ekki með",
                "„“ \"\""),
    "fi": _lang("aaaaaiiiiieeeeeuuuooäääöy", "tttttnnnnsssslllkkkkmmmvvvrrrhhhjjjppdg",
                "st ks tt kk ll nn",
                "ja on ei se että oli hän mutta kun niin myös tai ovat",
                "”” »» \"\""),
    "nl": _lang("eeeeeaaaaoooiiiuuĳ", "nnnnttttrrrrddddsssslllgggkkkmmmvvwwhhbbppzzjjcf",
                "ij ch sch oe ui ou",
                "de het een en van in is dat op te zijn voor met niet aan ook als er",
                "„” ‘’ \"\""),
    "eo": _lang("aaaaeeeeooooiiiuuŭ", "nnnrrrllltttsssskkkmmmddpppvvgjjĉĉĝĝĥĵŝŝbbcfz",
                "kr pr tr st sk",
                "la kaj de en estas al ne por kun ke mi ĉi tiu",
                "„“ «» \"\""),
    "mt": _lang("aaaaeeeiiiuuoo", "lllnnnttttrrrkkkmmmssbbdddġġċċħħżżgħjjqqfvwxz",
                "għ ie",
                "il u li ta fil ma minn għal dan dik huwa",
                "“” \"\""),
    "misc": _lang("aaeeiioouuāēīōūăĕĭŏŭĩũ", "nnrrsttllkkmmŧđŋĸŀŉŗļņķģŕĺľĥħŵŷţşțșőű",
                "ng",
                "",
                "«» „“ “”"),
}
# Real European print is mostly plain ASCII: English weighs as much as all other languages together,
# and the rare-letter profiles ("misc", Esperanto, Maltese, Icelandic) are rare, so the model does not
# learn to expect accents where noise blurs a plain letter (issue 10: "Öur", "dweĺling", "taľe").
LANGUAGE_WEIGHTS = {"en": 50, "de": 9, "fr": 8, "es": 5, "pt": 3, "it": 4, "cs": 6, "sk": 2, "pl": 3,
                    "hu": 2, "ro": 1.5, "hr": 1.5, "lv": 0.7, "lt": 0.7, "tr": 1, "nordic": 3, "is": 0.3, "fi": 1,
                    "nl": 3, "eo": 0.2, "mt": 0.2, "misc": 0.4}
# Common English words, rich in the letter pairs print sets as ligatures (fi, fl, ff, ffi, ffl, ft, st, ct)
# and in the letters small caps and italics make hard (so the real-word share of English lines teaches them).
_ENGLISH_TEXT = """
the of and to in is that for it as with was on be by this are or from at which not but have an his her they
we you he she had were their been has more one all would there what so up out if about who them some could
time only new other into two may first after then also made over such these our any most many well
office official officer affairs effect effort efficient difficult different offer offered suffer traffic
staff stuff cliff coffee afford affect sufficient profit profile field fifth fifty fifteen figure final finally
find finding fine finish fire firm fish fit five fix flag flat flesh flight floor flow flower fluid fly flying
flux fleet flame flood flourish reflect inflation conflict influence influential affluent baffle shuffle waffle
scaffold officially sufficiently effectively office's artifact benefit classified clarify identify justify
modified notified satisfied signify specific terrific scientific beneficial artificial superficial
after often soft left gift shift craft draft loft lift swift theft
first last most best just must fast past least against still state street story study style system
act fact action active actual effect elect select direct district product practice protect respect object
and with when where which while whom whose why will wish within without woman women wonder word work world
quickly quiet quite quote question equal require request quality quantity
morning evening during nothing something thing thought through though although enough rough brought
dwelling telling well tell tale tales love hand land lone alone our hour house mouse
Mr Mrs Dr St Street Road London New York Chapter Section Page Volume Table Figure Contents Index
"""
ENGLISH_WORDS = tuple(_ENGLISH_TEXT.split())
ROMAN = ["I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI", "XII", "XIV", "XIX", "XX", "XXI"]
SYMBOLS = "#$%&*+/<=>@[\\]^_`{|}~§°€"


ACCENT_KEEP = 0.4


def _plain(ch: str) -> str:
    """The letter without its accents ('é' -> 'e'); letters that are no accented form (ß, ø, ł) stay."""
    base = unicodedata.normalize("NFD", ch)[0]
    return base if base.isascii() and base.isalpha() else ch


def _charset_filter(text: str) -> str:
    allowed = set(CHARACTERS)
    return "".join(ch for ch in text if ch in allowed)


class TextGenerator:
    """Random line texts whose character statistics look like European print."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.langs = list(LANGUAGE_WEIGHTS)
        self.weights = [LANGUAGE_WEIGHTS[k] for k in self.langs]

    def word(self, lang: Language) -> str:
        r = self.rng
        if lang is LANGUAGES["en"] and r.random() < 0.55:
            return r.choice(ENGLISH_WORDS)
        if lang.words and r.random() < 0.35:
            return r.choice(lang.words)
        syllables = r.choices([1, 2, 3, 4, 5], weights=[18, 34, 28, 14, 6])[0]
        out = []
        for _syllable in range(syllables):
            if r.random() < 0.75:
                if lang.clusters and r.random() < 0.15:
                    out.append(r.choice(lang.clusters))
                else:
                    out.append(r.choice(lang.consonants))
            out.append(r.choice(lang.vowels))
            if r.random() < 0.3:
                out.append(r.choice(lang.consonants))
        # The letter profiles list accented letters several times each; real words carry fewer of them
        # (about one letter in 25 in French, one in 60 in German), so most are set plain.
        return "".join(ch if ch.isascii() or r.random() < ACCENT_KEEP else _plain(ch) for ch in "".join(out))

    def number(self) -> str:
        r = self.rng
        kind = r.randrange(14)
        if kind == 0:
            return str(r.randint(0, 99))
        if kind == 1:
            return str(r.randint(100, 99999))
        if kind == 2:
            sep = r.choice([" ", ".", ","])
            return f"{r.randint(1, 999)}{sep}{r.randint(0, 999):03d}"
        if kind == 3:
            return f"{r.randint(0, 9999)}{r.choice(',.')}{r.randint(0, 99):02d}"
        if kind == 4:
            return r.choice(["{d}. {m}. {y}", "{d}.{m}.{y}", "{y}-{mm}-{dd}", "{m}/{d}/{y}"]).format(
                d=r.randint(1, 31), m=r.randint(1, 12), y=r.randint(1500, 2030),
                mm=f"{r.randint(1, 12):02d}", dd=f"{r.randint(1, 31):02d}")
        if kind == 5:
            return f"{r.randint(0, 23)}:{r.randint(0, 59):02d}"
        if kind == 6:
            return f"{r.randint(0, 100)}{r.choice(['', ' '])}%"
        if kind == 7:
            amount = f"{r.randint(1, 9999)}{r.choice(',.')}{r.randint(0, 99):02d}"
            return r.choice([f"{amount} €", f"€{amount}", f"${amount}", f"{amount} Kč", f"{amount} Ft"])
        if kind == 8:
            return f"+{r.randint(1, 499)} {r.randint(100, 999)} {r.randint(100, 999)} {r.randint(100, 999)}"
        if kind == 9:
            return f"{r.randint(1, 40)}{r.choice(['.', 'th', 'st', 'nd', '°', ' °C', '°F'])}"
        if kind == 10:
            return r.choice(ROMAN)
        if kind == 11:
            return f"§ {r.randint(1, 999)}" if r.random() < 0.7 else f"§{r.randint(1, 99)}"
        if kind == 12:
            a = r.randint(1, 2000)
            return f"{a}{r.choice(['–', '-', '—'])}{a + r.randint(1, 50)}"
        return f"{r.randint(0, 9)}{r.choice('.,')}{r.randint(0, 9999)}"

    def oddity(self) -> str:
        """Rare tokens: e-mails, web addresses, symbols, random characters (so every class is seen)."""
        r = self.rng
        kind = r.randrange(5)
        if kind == 0:
            w = self.word(LANGUAGES["en"])
            return f"{w}@{self.word(LANGUAGES['de'])}.{r.choice(['cz', 'com', 'org', 'eu', 'de'])}"
        if kind == 1:
            domain = r.choice(["cz", "com", "org", "net"])
            return f"www.{self.word(LANGUAGES['cs'])}.{domain}/{self.word(LANGUAGES['en'])}"
        if kind == 2:
            return "".join(r.choice(SYMBOLS) for _ in range(r.randint(1, 3)))
        return "".join(r.choice(CHARACTERS[1:]) for _ in range(r.randint(1, 6)))

    def line(self, max_chars: int | None = None) -> str:
        r = self.rng
        lang = LANGUAGES[r.choices(self.langs, weights=self.weights)[0]]
        if max_chars is None:
            max_chars = r.choice([r.randint(1, 18), r.randint(12, 50), r.randint(30, 90), r.randint(30, 90)])
        case = r.choices(["normal", "upper", "title"], weights=[90, 6, 4])[0]
        tokens: list[str] = []
        sentence_start = r.random() < 0.5
        quote_open: str | None = None
        length = 0
        while length < max_chars:
            p = r.random()
            if p < 0.1:
                tok = self.number()
            elif p < 0.115:
                tok = self.oddity()
            else:
                tok = self.word(lang)
                if r.random() < 0.03:
                    tok = tok + r.choice(["-", "’", "'"]) + self.word(lang)
                if sentence_start or r.random() < 0.08:
                    tok = tok[:1].upper() + tok[1:]
            sentence_start = False
            # Quotes and brackets open before a token and close after a later one.
            closing = None
            if quote_open is None and r.random() < 0.05:
                left, quote_open = r.choice(lang.quotes + (("(", ")"), ("[", "]"), ("‘", "’")))
                tok = left + tok
            elif quote_open is not None and r.random() < 0.35:
                closing, quote_open = quote_open, None
            q = r.random()
            punct = ""
            if q < 0.08:
                punct = ","
            elif q < 0.12:
                punct = "."
            elif q < 0.14:
                punct = r.choice([";", ":", "!", "?", "...", "?!"])
            elif q < 0.16:
                punct = r.choice([" –", " —", " -", "—"])
            if closing is not None:
                # Quoted speech mostly ends a clause, and English typesetting puts the clause's
                # punctuation inside the closing quote (own.” what?”), much of Europe after it
                # (own”.): a model that had only seen the latter read every .” as ” or ?.
                if not punct and r.random() < 0.5:
                    punct = r.choice([".", ".", ",", "?", "!"])
                if punct and not punct.startswith(" ") and r.random() < 0.6:
                    tok = tok + punct + closing
                else:
                    tok = tok + closing + punct
            else:
                tok += punct
            if punct:
                sentence_start = punct[-1] in "!?."
            tokens.append(tok)
            length += len(tok) + 1
        if quote_open is not None and r.random() < 0.5:
            tokens[-1] += quote_open
        if r.random() < 0.04:
            tokens[-1] += "-"  # hyphenated at the line end
        text = " ".join(tokens)
        if case == "upper":
            text = text.upper()
        elif case == "title":
            text = " ".join(t[:1].upper() + t[1:] for t in text.split(" "))
        text = _charset_filter(text)
        text = " ".join(text.split())  # one space between words; never leading/trailing
        if len(text) > max_chars + 12:
            text = text[:max_chars + 12].rstrip()
        return text or "a"


# --------------------------------------------------------------------------------------------
# Fonts
# --------------------------------------------------------------------------------------------


@dataclass
class FontFile:
    path: str
    family: str
    style: str
    missing: str


def load_fonts(font_dir: Path, manifest: str = "manifest.json") -> list[FontFile]:
    """Fonts listed in the manifest written by collect_fonts.py."""
    entries = json.loads((font_dir / manifest).read_text(encoding="utf-8"))
    return [FontFile(str(font_dir / e["file"]), e["family"], e["style"], e["missing"]) for e in entries]


def find_system_fonts(family: str, dirs: tuple[str, ...] = ("/usr/share/fonts",)) -> list[FontFile]:
    """Files of one installed family, by file name prefix (e.g. 'Caladea' -> Caladea-*.ttf)."""
    key = family.replace(" ", "").lower()
    out = []
    for d in dirs:
        for p in sorted(Path(d).rglob("*")):
            if p.suffix.lower() in (".ttf", ".otf") and p.name.replace(" ", "").lower().startswith(key):
                out.append(FontFile(str(p), family, p.stem.split("-")[-1], ""))
    return out


class FontCache:
    """PIL fonts by (file, size); opening a font file costs ~1 ms, rendering reuses it."""

    def __init__(self, limit: int = 400):
        self.limit = limit
        self.cache: dict[tuple[str, int], ImageFont.FreeTypeFont] = {}

    def get(self, path: str, size: int) -> ImageFont.FreeTypeFont:
        key = (path, size)
        font = self.cache.get(key)
        if font is None:
            if len(self.cache) >= self.limit:
                self.cache.pop(next(iter(self.cache)))
            font = ImageFont.truetype(path, size)
            self.cache[key] = font
        return font


# --------------------------------------------------------------------------------------------
# Geometry (what a line detector reports) and cropping
# --------------------------------------------------------------------------------------------


def _load_layout_geometry():
    """The layout stage's `line_geometry` (worker/layout/geometry.py), loaded by file path.

    Training crops must cover the letters exactly as the crops made from the
    layout stage's PAGE XML at run time, so both use this one function. Loading
    by path keeps this script runnable from a bare checkout (no package install).
    """
    import importlib.util
    path = Path(__file__).resolve().parent.parent / "worker" / "layout" / "geometry.py"
    spec = importlib.util.spec_from_file_location("pero_worker_layout_geometry", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.line_geometry


line_geometry = _load_layout_geometry()


def detector_geometry(ink: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(baseline points, up, down) of one rendered line's ink mask, as the layout stage reports them."""
    baseline, (up, down) = line_geometry(ink)
    return np.asarray(baseline, dtype=np.float64), float(up), float(down)


def detector_errors(rng: random.Random, em: float, baseline: np.ndarray, up: float,
                    down: float) -> tuple[np.ndarray, float, float]:
    """Perturb the geometry a little: real pages give the detector noisy, binarised ink."""
    if rng.random() < 0.75:
        up *= rng.uniform(0.94, 1.07)
        down *= rng.uniform(0.9, 1.15)
    else:
        up *= rng.uniform(0.85, 1.2)
        down *= rng.uniform(0.8, 1.35)
    bl = baseline.copy()
    bl[0, 1] += rng.gauss(0, 0.03 * em)
    bl[-1, 1] += rng.gauss(0, 0.03 * em)
    bl[0, 0] -= rng.uniform(-0.08, 0.15) * em
    bl[-1, 0] += rng.uniform(-0.08, 0.15) * em
    return bl, up, down


@functools.cache
def cropper():
    """pero-ocr's line cropper, configured like the bundled config.ini's LINE_CROPPER (made once, on first use)."""
    from pero_ocr.core.crop_engine import EngineLineCropper
    return EngineLineCropper(line_height=LINE_HEIGHT, poly=INTERP, scale=LINE_SCALE)


# --------------------------------------------------------------------------------------------
# Rendering and degradation
# --------------------------------------------------------------------------------------------


# Pillow shapes text with libraqm (HarfBuzz) when it has it: only then are OpenType ligatures ("fi", "fl",
# "ffi" as one glyph, as books and magazines print them) and true small caps (`smcp`) drawn at all.
SHAPING = features.check("raqm")


@dataclass(frozen=True)
class Style:
    """How one line is set, beyond its font: OpenType features, small caps, letter-spacing, faux bold.

    The label is always the text as typed: ligatures read as their letters, small capitals as the
    lowercase letters they stand for, letter-spaced words without the extra spaces.
    """
    features: tuple[str, ...] = ("liga",)
    small_caps: str = ""          # "" | "smcp" (the font's own small capitals) | "faux" (scaled capitals)
    tracking: float = 0.0         # extra space after every character, in em (letter-spaced titles)
    stroke: int = 0               # px of faux bold around every glyph


PLAIN = Style()


@functools.lru_cache(maxsize=512)
def has_small_caps(path: str) -> bool:
    """Whether the font has its own small capitals (the `smcp` feature changes how 'x' is drawn)."""
    if not SHAPING:
        return False
    font = ImageFont.truetype(path, 40)
    return font.getbbox("x", features=["smcp"]) != font.getbbox("x")


def choose_style(rng: random.Random, font_file: FontFile, text: str) -> Style:
    """Random setting of one line: ligatures mostly on (as in print), sometimes small caps or letter-spaced."""
    feats = ("liga",) if rng.random() < 0.85 else ("-liga",)
    small_caps = ""
    if rng.random() < 0.06 and any(ch.islower() for ch in text):
        small_caps = "smcp" if has_small_caps(font_file.path) and rng.random() < 0.7 else "faux"
    tracking = rng.uniform(0.06, 0.5) if rng.random() < 0.06 else 0.0
    stroke = 1 if rng.random() < 0.03 else 0
    return Style(feats + (("smcp",) if small_caps == "smcp" else ()), small_caps, tracking, stroke)


def _pieces(text: str, style: Style) -> list[tuple[str, float]] | None:
    """(string, size factor) pieces for glyph-by-glyph drawing; None when the line is drawn in one go."""
    if not style.tracking and style.small_caps != "faux":
        return None
    out = []
    for ch in text:
        upper = ch.upper()
        if style.small_caps == "faux" and ch.islower() and len(upper) == 1:
            out.append((upper, 0.74))
        else:
            out.append((ch, 1.0))
    return out


def _features(style: Style) -> list[str] | None:
    return list(style.features) if SHAPING else None


def line_extent(text: str, font, style: Style = PLAIN) -> tuple[float, float, float, float]:
    """Ink box (x0, y0, x1, y1) of the line drawn with `_draw_line`, relative to its baseline start."""
    pieces = _pieces(text, style)
    if pieces is None:
        return font.getbbox(text, anchor="ls", features=_features(style), stroke_width=style.stroke)
    x0, y0, _x1, y1 = font.getbbox(text, anchor="ls", stroke_width=style.stroke)
    return x0, y0, _advance(pieces, font, style), y1


def _advance(pieces: list[tuple[str, float]], font, style: Style) -> float:
    em = font.size
    return sum(_sized(font, factor).getlength(piece) + style.tracking * em for piece, factor in pieces)


def _sized(font, factor: float):
    return font if factor == 1.0 else font.font_variant(size=max(4, int(round(font.size * factor))))


def _draw_line(canvas: Image.Image, xy: tuple[float, float], text: str, font, fill: int,
               style: Style = PLAIN) -> None:
    """Draw text with its baseline's left end at xy."""
    draw = ImageDraw.Draw(canvas)
    pieces = _pieces(text, style)
    if pieces is None:
        draw.text(xy, text, font=font, fill=fill, anchor="ls", features=_features(style),
                  stroke_width=style.stroke, stroke_fill=fill)
        return
    x, y = xy
    for piece, factor in pieces:
        sized = _sized(font, factor)
        draw.text((x, y), piece, font=sized, fill=fill, anchor="ls", stroke_width=style.stroke, stroke_fill=fill)
        x += sized.getlength(piece) + style.tracking * font.size


def _degrade(img: np.ndarray, rng: random.Random, nrng: np.random.Generator, em: float,
             paper: int, ink: int) -> np.ndarray:
    """Scan-like degradations of a float32 grey canvas (0..255)."""
    h, w = img.shape
    if rng.random() < 0.07:  # halftone screen: text printed on a tinted (dotted) background
        img = _halftone(img, rng, paper, ink)
    if rng.random() < 0.35:  # paper texture / uneven illumination
        small = nrng.normal(0, 1, (max(2, h // 16), max(2, w // 16))).astype(np.float32)
        field = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        img = img + field * rng.uniform(2, 14) * (img > (paper + ink) / 2)
    if rng.random() < 0.12:  # uneven light across the line (book gutter, scanner lamp): up to 35 % darker
        ramp = np.linspace(0.0, 1.0, w, dtype=np.float32) ** rng.uniform(0.5, 2.5)
        if rng.random() < 0.5:
            ramp = ramp[::-1]
        img = img * (1.0 - rng.uniform(0.1, 0.35) * ramp)[None, :]
    if rng.random() < 0.5:
        sigma = rng.uniform(0.3, 1.3) * em / 28.0
        img = cv2.GaussianBlur(img, (0, 0), max(0.3, sigma))
    if rng.random() < 0.15:  # low-resolution scan
        f = rng.uniform(0.45, 0.8)
        small = cv2.resize(img, (max(8, int(w * f)), max(8, int(h * f))), interpolation=cv2.INTER_AREA)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.12:  # binarised scan
        t = (paper + ink) / 2 + rng.uniform(-0.15, 0.15) * (paper - ink)
        img = np.where(img < t, float(ink), float(paper)).astype(np.float32)
        if rng.random() < 0.3:
            img = cv2.GaussianBlur(img, (0, 0), 0.5)
    if rng.random() < 0.6:
        img = img + nrng.normal(0, rng.uniform(1, 12), img.shape).astype(np.float32)
    if rng.random() < 0.1:  # specks
        n = int(w * h * rng.uniform(0.0002, 0.002))
        ys = nrng.integers(0, h, n)
        xs = nrng.integers(0, w, n)
        img[ys, xs] = ink
    if rng.random() < 0.2:  # gamma / contrast
        g = rng.uniform(0.6, 1.6)
        img = 255.0 * (np.clip(img, 0, 255) / 255.0) ** g
    img = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < 0.4:
        q = rng.randint(15, 90)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok:
            img = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    return img


def _halftone(img: np.ndarray, rng: random.Random, paper: int, ink: int) -> np.ndarray:
    """A rotated dot screen on the paper (not on the ink), as under text printed on a tint."""
    h, w = img.shape
    period = rng.uniform(2.5, 7.0)
    angle = math.radians(rng.choice([15, 45, 75, 0]))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xs * math.cos(angle) + ys * math.sin(angle)) * (2 * math.pi / period)
    v = (-xs * math.sin(angle) + ys * math.cos(angle)) * (2 * math.pi / period)
    dots = (np.cos(u) + np.cos(v)) > rng.uniform(0.2, 1.4)
    on_paper = img > (paper + ink) / 2
    return np.where(dots & on_paper, img - rng.uniform(0.15, 0.45) * (paper - ink), img).astype(np.float32)


def _bleed_through(coverage: np.ndarray, rng: random.Random, neighbours: TextGenerator, font, em: float,
                   base_y: float) -> np.ndarray:
    """Faint mirrored text of the other side of the sheet, added to the ink coverage (0..255)."""
    h, w = coverage.shape
    back = Image.new("L", (w, h), 0)
    _draw_line(back, (rng.uniform(-0.5, 0.5) * em, base_y + rng.uniform(-0.6, 0.6) * em),
               neighbours.line(max(8, int(w / (0.5 * em)))), font, 255)
    mirrored = cv2.GaussianBlur(np.asarray(back, dtype=np.float32)[:, ::-1], (0, 0), max(0.6, em / 30.0))
    return np.maximum(coverage, mirrored * rng.uniform(0.08, 0.28))


def small_caps_label(text: str) -> str:
    """What a line set in small capitals reads as: its letters as capitals (pure).

    Small capitals look like capitals; in a 40 px line normalised to its own height a line of small
    caps cannot be told from a line of capitals, so labelling them in their typed case taught the
    model to read capitals as lower case ("PURPOSE" -> "Purpose", "GNU" -> "GNu").  Transcriptions
    of printed books give small caps as capitals too, and so does bench/magazine.py's ground truth.
    A letter whose capital is not one character of the charset stays as it is (ß)."""
    out = []
    for ch in text:
        upper = ch.upper()
        out.append(upper if len(upper) == 1 and upper in CHARACTERS else ch)
    return "".join(out)


def render_sample(text: str, font_file: FontFile, rng: random.Random, fonts: FontCache,
                  neighbours: TextGenerator | None = None, augment: bool = True,
                  em: int | None = None) -> np.ndarray:
    """Render `text` on a page-like canvas and return the 40 px high grey crop (uint8, H x W).

    Raises ValueError when the line cannot be rendered or cropped (e.g. no ink).
    """
    return render_labelled(text, font_file, rng, fonts, neighbours, augment, em)[0]


def render_labelled(text: str, font_file: FontFile, rng: random.Random, fonts: FontCache,
                    neighbours: TextGenerator | None = None, augment: bool = True,
                    em: int | None = None) -> tuple[np.ndarray, str]:
    """`render_sample` and the line's label: `text`, or its capitals when the line was set in small caps."""
    nrng = np.random.default_rng(rng.getrandbits(32))
    if em is None:
        # 8-12 pt at 150-400 dpi: 17-67 px to the em; small print at 150 dpi goes down to 14 px.
        em = int(round(math.exp(rng.uniform(math.log(14), math.log(66)))))
    font = fonts.get(font_file.path, em)
    style = choose_style(rng, font_file, text) if augment else PLAIN
    x0, y0, x1, y1 = line_extent(text, font, style)
    if augment:
        # Horizontal scale (narrow/wide print, scanner aspect) and a slight rotation of the page.
        sx = rng.uniform(0.82, 1.18) if rng.random() < 0.5 else 1.0
        angle = max(-2.5, min(2.5, rng.gauss(0, 0.8))) if rng.random() < 0.7 else 0.0
        paper = rng.randint(165, 255)
        if rng.random() < 0.1:   # low contrast: grey print on grey paper
            ink = max(0, paper - rng.randint(40, 80))
        else:
            ink = rng.randint(0, max(0, min(110, paper - 75)))
    else:
        sx, angle, paper, ink = 1.0, 0.0, 245, 20
    margin = int(em * 1.2)
    width = int(x1 - min(x0, 0)) + 2 * margin
    leading = em * rng.uniform(1.05, 1.6)
    # Tall enough for the neighbours' descenders/ascenders and for the rotated line's ends.
    half = int(max(leading + 0.35 * em, 1.8 * em) + abs(math.tan(math.radians(angle))) * width / 2 + 2)
    height = 2 * half
    base_y = float(half)
    base_x = margin - min(x0, 0)

    mask = Image.new("L", (width, height), 0)
    _draw_line(mask, (base_x, base_y), text, font, 255, style)
    coverage = np.asarray(mask, dtype=np.float32)
    if neighbours is not None and augment and rng.random() < 0.65:
        others = Image.new("L", (width, height), 0)
        for direction in (-1, 1):
            if rng.random() < 0.8:
                other = neighbours.line(max(3, int(len(text) * rng.uniform(0.5, 1.4))))
                other = "".join(ch for ch in other if ch not in font_file.missing) or "a"
                _draw_line(others, (base_x + rng.uniform(-1, 1) * em, base_y + direction * leading),
                           other, font, 255)
        coverage = np.maximum(coverage, np.asarray(others, dtype=np.float32))
    if neighbours is not None and augment and rng.random() < 0.07:
        coverage = _bleed_through(coverage, rng, neighbours, font, em, base_y)
    img = paper - (paper - ink) * (coverage / 255.0)
    ink_mask = np.asarray(mask) > 96

    baseline, up, down = detector_geometry(ink_mask)
    if augment:
        baseline, up, down = detector_errors(rng, em, baseline, up, down)
    n_points = rng.randint(2, 5)
    t = np.linspace(0.0, 1.0, n_points)[:, None]
    pts = baseline[0] * (1 - t) + baseline[-1] * t

    if augment:
        m = cv2.getRotationMatrix2D((width / 2, base_y), angle, 1.0)
        m[0, :] *= sx
        new_w = int(width * sx)
        img = cv2.warpAffine(img.astype(np.float32), m, (new_w, height), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=float(paper))
        pts = pts @ m[:, :2].T + m[:, 2]
        img = _degrade(img, rng, nrng, em, paper, ink)
    else:
        img = np.clip(img, 0, 255).astype(np.uint8)

    crop = cropper().crop(img, pts, (up, down))
    if crop.ndim == 3:
        crop = crop[:, :, 0]
    if crop.shape[0] != LINE_HEIGHT or crop.shape[1] < 8 or not crop.any():
        raise ValueError("crop failed")
    return crop, (small_caps_label(text) if style.small_caps else text)


class LineSampler:
    """Endless (crop, text) samples for one process, from a seed."""

    def __init__(self, fonts: list[FontFile], seed: int, augment: bool = True):
        self.rng = random.Random(seed)
        self.fonts = fonts
        self.text = TextGenerator(self.rng)
        self.cache = FontCache()
        self.augment = augment

    def sample(self) -> tuple[np.ndarray, str]:
        for _ in range(20):
            font = self.rng.choice(self.fonts)
            text = self.text.line()
            if font.missing:
                text = "".join(ch for ch in text if ch not in font.missing).strip() or "a"
                text = " ".join(text.split())
            try:
                crop, label = render_labelled(text, font, self.rng, self.cache, self.text, self.augment)
            except (ValueError, OSError):
                continue
            return crop, label
        raise RuntimeError("could not render a line in 20 tries")


def engine_batch(crops: list[np.ndarray]) -> np.ndarray:
    """Put crops on one black canvas exactly like pero-ocr's BaseEngineLineOCR.process_lines.

    Width: the longest crop rounded up to 32 px, plus 32 px black padding on each side.
    Returns uint8 N x H x W (grey; the engine's 3 channels are copies for grey pages).
    """
    max_w = int(np.ceil(max(c.shape[1] for c in crops) / 32.0) * 32)
    out = np.zeros((len(crops), LINE_HEIGHT, max_w + 2 * PADDING), dtype=np.uint8)
    for o, c in zip(out, crops):
        o[:, PADDING:PADDING + c.shape[1]] = c
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--font-dir", type=Path, default=Path(".fonts"), help="folder made by collect_fonts.py")
    ap.add_argument("--family", help="render this installed family instead (e.g. the held-out one)")
    ap.add_argument("--count", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clean", action="store_true", help="no augmentation")
    ap.add_argument("--out", type=Path, required=True, help="folder for NNNN.png + labels.txt")
    args = ap.parse_args()
    fonts = find_system_fonts(args.family) if args.family else load_fonts(args.font_dir)
    if not fonts:
        ap.error("no fonts found")
    sampler = LineSampler(fonts, args.seed, augment=not args.clean)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "labels.txt", "w", encoding="utf-8") as labels:
        for i in range(args.count):
            crop, text = sampler.sample()
            cv2.imwrite(str(args.out / f"{i:04d}.png"), crop)
            labels.write(f"{i:04d}.png {text}\n")
    print(f"{args.count} lines -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
