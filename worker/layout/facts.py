"""What the layout stage knows about a page, for the quality flags of later stages.

The layout stage is the only one that sees the whole page before recognition:
it knows whether there is ink at all, which way up the page was, how much of
it was pictures or scanner border.  A later stage (the OCR stage's quality
flags, the publisher's summary) must be able to tell "a blank page" from "a
page with print on which no text was found" from "a page that was read
sideways", so the layout stage writes these facts into the PAGE XML as the
`custom` attribute of the Page element, in PAGE's `name {key:value;}` syntax:

    <Page ... custom="layout {orientation:180; orientation_conf:0.92; skew:0.41; ink:1; ...}">

`read_facts(xml)` gets them back (None when the XML has none, e.g. it came
from another layout tool).  pero-ocr rewrites the Page element when the OCR
stage saves its result, so a stage that wants the facts reads them from the
PAGE XML it receives, before processing.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields

CUSTOM_NAME = "layout"


@dataclass(frozen=True)
class LayoutFacts:
    orientation: int = 0            # clockwise quarter turn applied to read the page upright (0/90/180/270)
    orientation_conf: float = 0.0   # 0..1; 0 = too little text to decide
    skew: float = 0.0               # residual skew corrected, degrees
    ink: bool = False               # the page has print on it (text-like or picture), border excluded
    text_components: int = 0        # letter-like marks found
    lines: int = 0                  # text lines found
    regions: int = 0                # text regions found
    picture_fraction: float = 0.0   # share of the page area masked as pictures
    border: bool = False            # a scanner border was found and removed
    scale: float = 1.0              # working resolution / image resolution the layout ran at

    @property
    def ink_without_text(self) -> bool:
        """Print on the page but no line found: never a silent empty page."""
        return self.ink and self.lines == 0

    def to_custom(self) -> str:
        """PAGE `custom` attribute value."""
        parts = []
        for key, value in asdict(self).items():
            if isinstance(value, bool):
                value = int(value)
            elif isinstance(value, float):
                value = round(value, 4)
            parts.append(f"{key}:{value}")
        return f"{CUSTOM_NAME} {{{'; '.join(parts)};}}"

    @classmethod
    def from_custom(cls, custom: str) -> LayoutFacts | None:
        """Parse the `layout {...}` part of a custom attribute; None when absent. Unknown keys are ignored."""
        m = re.search(rf"(?:^|\s){CUSTOM_NAME}\s*\{{([^}}]*)\}}", custom or "")
        if not m:
            return None
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, object] = {}
        for item in m.group(1).split(";"):
            key, _, raw = item.partition(":")
            key, raw = key.strip(), raw.strip()
            if key not in types or not raw:
                continue
            try:
                kind = types[key]
                values[key] = bool(int(raw)) if kind == "bool" else int(raw) if kind == "int" else float(raw)
            except ValueError:
                continue
        return cls(**values)


def add_facts_to_pagexml(xml: str, facts: LayoutFacts) -> str:
    """The PAGE XML text with the facts in Page/@custom (other custom content kept)."""
    from lxml import etree

    root = etree.fromstring(xml.encode("utf-8"))
    page = next(el for el in root.iter() if isinstance(el.tag, str) and etree.QName(el).localname == "Page")
    old = page.get("custom", "")
    old = re.sub(rf"(?:^|\s){CUSTOM_NAME}\s*\{{[^}}]*\}}", "", old).strip()
    page.set("custom", (old + " " if old else "") + facts.to_custom())
    return etree.tostring(root, encoding="utf-8", xml_declaration=True, pretty_print=True).decode("utf-8")


def read_facts(xml: bytes | str) -> LayoutFacts | None:
    """The layout facts of a PAGE XML document, or None (no facts, or not parseable)."""
    from lxml import etree

    data = xml.encode("utf-8") if isinstance(xml, str) else xml
    try:
        root = etree.fromstring(data, parser=etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError:
        return None
    for el in root.iter():
        if isinstance(el.tag, str) and etree.QName(el).localname == "Page":
            return LayoutFacts.from_custom(el.get("custom", ""))
    return None
