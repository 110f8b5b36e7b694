"""A small multilingual sentence generator for synthetic pages.

The vocabulary is our own; it mixes English, Czech, German and French so that
pages exercise diacritics, capitals, digits and common punctuation the way
real documents do.  Deterministic for a given random.Random.
"""

from __future__ import annotations

import random

WORDS: dict[str, list[str]] = {
    "en": ["the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "they", "you", "were", "her", "she", "there", "been", "one", "all", "we", "their", "has", "would", "when", "if", "so", "no", "more", "had", "out", "what", "up", "can", "about", "into", "than", "them", "only", "other", "some", "time", "two", "may", "first", "then", "do", "any", "like", "my", "now", "over", "such", "our", "man", "me", "even", "most", "made", "after", "also", "did", "many", "before", "must", "through", "back", "years", "where", "much", "your", "way", "well", "down", "should", "because", "each", "just", "those", "people", "how", "too", "little", "state", "good", "very", "make", "world", "still", "own", "see", "men", "work", "long", "get", "here", "between", "both", "life", "being", "under", "never", "day", "same", "another", "know", "while", "last", "might", "us", "great", "old", "year", "off", "come", "since", "against", "go", "came", "right", "used", "take", "three", "house", "library", "archive", "letter", "river", "morning", "village", "council", "harbour", "printer", "paper", "winter", "railway", "bridge", "market", "garden", "chapter", "report", "journey", "window", "evening", "summer", "question", "answer", "history", "mountain", "children", "written", "printed", "quietly", "several", "ancient", "northern", "careful", "modern"],
    "cs": ["a", "v", "se", "na", "je", "že", "s", "z", "do", "to", "o", "i", "k", "jako", "ale", "by", "pro", "jsou", "tak", "po", "jeho", "už", "jak", "co", "bylo", "aby", "jen", "při", "které", "když", "ještě", "mezi", "před", "který", "roku", "město", "řeka", "kniha", "dopis", "země", "okno", "večer", "léto", "zima", "ráno", "práce", "škola", "lidé", "slovo", "cesta", "hora", "most", "knihovna", "archiv", "tiskárna", "noviny", "kapitola", "zpráva", "otázka", "odpověď", "historie", "děti", "vesnice", "zahrada", "trh", "železnice", "přístav", "rada", "dnes", "včera", "zítra", "velmi", "také", "proto", "protože", "všechno", "nikdy", "vždy", "často", "někdy", "dobře", "krásný", "starý", "nový", "velký", "malý", "první", "poslední", "český", "příští", "příběh", "úřad", "řád", "čtení", "žádost", "účet", "období", "náměstí", "obyvatelé", "stříbro", "dřevo", "kůň", "šest", "sedm", "osm", "devět", "deset", "jedenáct", "dvacet"],
    "de": ["der", "die", "das", "und", "in", "zu", "den", "nicht", "von", "sie", "ist", "des", "sich", "mit", "dem", "dass", "er", "es", "ein", "ich", "auf", "so", "eine", "auch", "als", "an", "nach", "wie", "im", "für", "man", "aber", "aus", "durch", "wenn", "nur", "war", "noch", "werden", "bei", "hat", "wir", "was", "wird", "sein", "einen", "welche", "sind", "oder", "zur", "um", "haben", "einer", "mir", "über", "ihm", "diese", "einem", "ihr", "uns", "da", "zum", "kann", "doch", "vor", "dieser", "mich", "ihn", "du", "hatte", "Stadt", "Fluss", "Buch", "Brief", "Fenster", "Abend", "Sommer", "Winter", "Morgen", "Arbeit", "Schule", "Menschen", "Wort", "Weg", "Berg", "Brücke", "Bibliothek", "Archiv", "Druckerei", "Zeitung", "Kapitel", "Bericht", "Frage", "Antwort", "Geschichte", "Kinder", "Dorf", "Garten", "Markt", "Eisenbahn", "Hafen", "Rathaus", "heute", "gestern", "morgen", "sehr", "immer", "oft", "manchmal", "gut", "schön", "alt", "neu", "groß", "klein", "erste", "letzte", "Straße", "Größe", "Übersicht", "Prüfung", "Bürger", "fünf", "zwölf", "Gemüse"],
    "fr": ["le", "la", "les", "de", "des", "du", "un", "une", "et", "à", "en", "que", "qui", "dans", "pour", "pas", "sur", "plus", "par", "ne", "il", "elle", "se", "ce", "au", "avec", "son", "sa", "ses", "mais", "comme", "on", "tout", "nous", "vous", "leur", "bien", "où", "sans", "deux", "fait", "été", "cette", "aussi", "très", "après", "avant", "ville", "rivière", "livre", "lettre", "fenêtre", "soir", "été", "hiver", "matin", "travail", "école", "gens", "mot", "chemin", "montagne", "pont", "bibliothèque", "archive", "imprimerie", "journal", "chapitre", "rapport", "question", "réponse", "histoire", "enfants", "village", "jardin", "marché", "chemin", "de", "fer", "port", "mairie", "aujourd'hui", "hier", "demain", "toujours", "souvent", "parfois", "bon", "beau", "vieux", "nouveau", "grand", "petit", "premier", "dernier", "élève", "année", "naïf", "français", "côté", "forêt", "fête", "garçon"],
}

LANGUAGES = tuple(WORDS)


def _number(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.4:
        return str(rng.randint(1750, 2024))
    if kind < 0.7:
        return str(rng.randint(2, 99))
    if kind < 0.85:
        return f"{rng.randint(1, 99)},{rng.randint(0, 9)} %"
    return f"{rng.randint(1, 28)}. {rng.randint(1, 12)}."


def sentence(rng: random.Random, lang: str | None = None) -> str:
    """One sentence of 5-14 words, capitalised, with occasional commas and numbers."""
    lang = lang or rng.choice(LANGUAGES)
    words = WORDS[lang]
    n = rng.randint(5, 14)
    out: list[str] = []
    for i in range(n):
        if rng.random() < 0.06:
            out.append(_number(rng))
        else:
            out.append(rng.choice(words))
        if 0 < i < n - 1 and rng.random() < 0.08:
            out[-1] += rng.choice([",", ",", ",", ";", ":"])
    first = out[0]
    out[0] = first[:1].upper() + first[1:]
    if rng.random() < 0.05:
        out[rng.randrange(len(out))] = "(" + out[rng.randrange(len(out))].strip(",;:") + ")"
    end = rng.choices([".", "!", "?", "..."], weights=[80, 6, 10, 2])[0]
    if lang == "fr" and end in "!?":
        end = " " + end
    text = " ".join(out).rstrip(",;:") + end
    if rng.random() < 0.05:
        text = "„" + text + "“" if lang in ("cs", "de") else "“" + text + "”"
    return text


def paragraph(rng: random.Random, n_sentences: int | None = None, lang: str | None = None) -> str:
    """A paragraph in one language (real paragraphs rarely switch mid-way)."""
    lang = lang or rng.choice(LANGUAGES)
    n = n_sentences or rng.randint(2, 6)
    return " ".join(sentence(rng, lang) for _ in range(n))


def title(rng: random.Random, lang: str | None = None) -> str:
    """A short heading: 2-6 capitalised words without final punctuation."""
    lang = lang or rng.choice(LANGUAGES)
    words = [w.strip(",;:") for w in rng.sample(WORDS[lang], rng.randint(2, 6))]
    return " ".join(w[:1].upper() + w[1:] for w in words)
