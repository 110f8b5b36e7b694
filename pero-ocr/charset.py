"""The character set of the bundled line-OCR model.

The order of CHARACTERS is the order of the network's output classes (the CTC
blank is one more class after the last character, as pero-ocr expects), so it
must never change for a trained model: `ocr_engine.json` stores a copy.
"""

ASCII = "".join(chr(c) for c in range(0x20, 0x7F))  # printable ASCII, space included

# Latin-1 letters (without the multiplication and division signs).
LATIN1_LETTERS = "".join(
    chr(c) for c in range(0xC0, 0x100) if chr(c) not in "\u00d7\u00f7"
)

# Latin Extended-A, without U+0149 (deprecated "'n"), which fonts rarely draw.
LATIN_EXT_A = "".join(chr(c) for c in range(0x100, 0x180) if c != 0x149)

# Typographic quotes and dashes, plus a few symbols common in European print.
TYPOGRAPHIC = "\u00ab\u00bb\u201e\u201c\u201d\u2018\u2019\u201a\u2013\u2014\u00a7\u00b0\u20ac"

CHARACTERS = ASCII + LATIN1_LETTERS + LATIN_EXT_A + TYPOGRAPHIC

assert len(set(CHARACTERS)) == len(CHARACTERS), "duplicate character in the charset"
