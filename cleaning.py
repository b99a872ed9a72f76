"""Text cleaning for the novel's PDF (1c) and Gallica's OCR (1a, 1b): pure functions, unit-tested.

What the model reads is what it writes, so everything a reader would not call prose goes:
page numbers, running headers, Gallica's source lines, line-end hyphenation, odd spaces.
"""
import re
import unicodedata
from collections import Counter

# Page numbers as printers set them: "12", "- 12 -", "– 12 –", "— 12 —", "[12]", "(12)", "p. 12".
PAGE_NUMBER = re.compile(r"^\s*(?:p\.\s*)?[\[(\-–—]?\s*\d{1,4}\s*[\])\-–—]?\s*$", re.IGNORECASE)
# Gallica prints its source on every page: "Source gallica.bnf.fr / Bibliothèque nationale de France".
GALLICA_SOURCE = re.compile(r"gallica\.bnf\.fr|biblioth[eè]que nationale de france|^\s*source\s*:?\s*bnf\s*$", re.IGNORECASE)
DIALOGUE_DASH = ("—", "–", "-")
# Right-hand parts of French compounds that a line break may split but must keep their hyphen:
# "peut-|être", "dit-|il", "c'est-à-|dire", "là-|bas", "celui-|ci", "vous-|même".
COMPOUND_TAILS = {
    "être", "il", "ils", "elle", "elles", "on", "je", "tu", "nous", "vous", "le", "la", "les", "lui",
    "leur", "moi", "toi", "y", "en", "t", "ci", "là", "bas", "haut", "dessus", "dessous", "dedans",
    "dehors", "même", "mêmes", "dire", "à", "delà", "deçà", "vis", "près", "ce", "ceci", "cela",
}
_CHAR_FIXES = {
    "ﬁ": "fi", "ﬂ": "fl", "ﬀ": "ff", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "st", "ﬆ": "st",
    "ſ": "s",  # the long s of old prints ("Applaudiſſoient")
    "\u00a0": " ", "\u202f": " ", "\u2009": " ", "\u2007": " ", "\u200a": " ", "\u2002": " ", "\u2003": " ",
    "\u200b": "", "\ufeff": "",
}
_CHAR_FIX_PATTERN = re.compile("[" + "".join(_CHAR_FIXES) + "]")
SOFT_HYPHEN = "\u00ad"


def normalize_chars(text):
    """Ligatures, long s, odd spaces -> plain characters; NFC so that "é" is one code point.
    (A regex finds the few odd characters: str.translate with a dict walks every character.)"""
    text = _CHAR_FIX_PATTERN.sub(lambda m: _CHAR_FIXES[m.group()], text)
    return text if unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)


def is_page_number(line):
    return bool(PAGE_NUMBER.match(line))


# Digits, brackets, dashes, dots and every space but "\n" (whole books are keyed in one pass). A
# character class, not `[^\S\n]` in an alternation: that made the pass 20% slower.
_NOT_HEADER_WORDS = re.compile("[\\d\\[\\]()\\-–—.\t\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")


def header_key(line):
    """What stays of a running header once its page number is gone: "12  LE CHÂTEAU" -> "le château"."""
    return _NOT_HEADER_WORDS.sub(" ", line).strip().lower()


def ends_with_line_hyphen(line):
    return len(line) >= 2 and line[-1] in ("-", SOFT_HYPHEN) and line[-2].isalpha()


def join_hyphenated(left, right, vocabulary=frozenset()):
    """Join `left` (ending in a line-end hyphen) with `right`, the text of the next line.

    A typesetter's hyphen goes ("arpen-" + "teur" -> "arpenteur"); a compound's hyphen stays
    ("peut-" + "être" -> "peut-être"). Evidence first: a form written whole elsewhere in the same
    book (`vocabulary`) decides; otherwise a known compound tail keeps the hyphen.
    """
    soft = left.endswith(SOFT_HYPHEN)
    head = left[:-1]
    first = re.match(r"[\w'’]+", right)
    tail = first.group(0) if first else ""
    if soft or not tail:
        return head + right
    prefix = re.search(r"[\w'’-]+$", head)
    return head + ("-" if keeps_hyphen(prefix.group(0) if prefix else "", tail, vocabulary) else "") + right


def keeps_hyphen(head_word, tail, vocabulary):
    """Whether "head_word-" at a line end + "tail" is a compound (keep the hyphen) or a word the
    typesetter cut (drop it). A form written whole elsewhere in the book wins; then the hyphenated
    form, a known compound tail, or a head already hyphenated ("c'est-à-" + "dire")."""
    joined, hyphenated = (head_word + tail).lower(), (head_word + "-" + tail).lower()
    if joined in vocabulary:
        return False
    return hyphenated in vocabulary or tail.lower() in COMPOUND_TAILS or "-" in head_word


_WORD_FORM = re.compile(r"[\w'’]+(?:-[\w'’]+)*")


def words_of(text):
    """The book's own word forms, hyphenated compounds included, for `join_hyphenated`."""
    return frozenset(_WORD_FORM.findall(text.lower()))


def join_lines(lines, vocabulary=frozenset()):
    """Lines of one paragraph -> one line: spaces between lines, line-end hyphenation undone."""
    text = ""
    for line in lines:
        line = line.strip()
        if not line:
            continue
        if text and ends_with_line_hyphen(text):
            text = join_hyphenated(text, line, vocabulary)
        else:
            text = f"{text} {line}" if text else line
    return re.sub(r"\s+", " ", text.replace(SOFT_HYPHEN, "")).strip()


def repeated_headers(page_edge_lines, min_share=0.2):
    """Header keys of lines that sit at a page's top or bottom on at least `min_share` of pages
    (at least 2). 0.2 catches headers that alternate between left and right pages (each on half)
    and those missing on chapter openings, while a sentence never repeats that often at an edge."""
    counts = Counter(key for keys in page_edge_lines for key in set(keys) if key)
    threshold = max(2, min_share * len(page_edge_lines))
    return {key for key, n in counts.items() if n >= threshold}


# ---------------------------------------------------------------------------------------------
# Gallica OCR (1a, 1b): text only, pages separated by blank lines, noise on every page.

FRENCH_FUNCTION_WORDS = frozenset(
    "le la les de des du et à au aux il elle ils elles un une en dans que qui ne pas pour par sur se "
    "son sa ses est était avait mais plus avec ce cette comme on nous vous lui leur".split()
)


def french_score(text, sample_chars=10000):
    """(share of letters among non-space characters, share of French function words among words),
    on `sample_chars` characters from the middle of the book (its start is often a title page or
    a table). French prose scores ~0.95 and ~0.35; English ~0.03 on the second; tables, indexes
    and garbled OCR fall on the first."""
    middle = max(0, len(text) // 2 - sample_chars // 2)
    sample = text[middle:middle + sample_chars]
    visible = len(sample) - sum(map(str.isspace, sample))
    letters = sum(map(str.isalpha, sample)) / max(1, visible)
    words = re.findall(r"[a-zàâçéèêëîïôûùüÿœæ]+", sample.lower())
    function = sum(w in FRENCH_FUNCTION_WORDS for w in words) / max(1, len(words))
    return letters, function


def drop_source_lines(text):
    """Empty every line that names Gallica/BnF as its source (found once in the whole book)."""
    pieces, kept_from = [], 0
    for match in GALLICA_SOURCE.finditer(text):
        line_start = text.rfind("\n", 0, match.start()) + 1
        if line_start < kept_from:
            continue  # a second mention on a line already dropped
        line_end = text.find("\n", match.end())
        pieces.append(text[kept_from:line_start])
        kept_from = len(text) if line_end < 0 else line_end
    return "".join(pieces) + text[kept_from:]


def looks_like_running_head(line):
    """Heads are titles: capitals ("MÉMOIRES D'UN VOYAGEUR"), a page number beside them, or a short
    line without closing punctuation ("Histoire de France"). A repeated line of dialogue
    ("— Oui.") is none of these, nor is a full-width line of prose (over 50 characters)."""
    line = line.strip()
    letters = [c for c in line if c.isalpha()]
    upper = sum(c.isupper() for c in letters) / max(1, len(letters))
    return not ends_with_line_hyphen(line) and (
        upper >= 0.6 or any(c.isdigit() for c in line)
        or (len(line) <= 50 and not line.endswith((".", "!", "?", "»", "…", ":", ";", ","))))


# Patterns start with the hyphen itself, so the regex engine skips ahead to candidates instead of
# trying every position (a leading lookbehind made these passes cost as much as the tokenizer).
_HYPHEN_OVER_BLANK = re.compile(r"([-\u00ad])\n(?:[ \t]*\n)+(?=[ \t]*[^\W\d_])")
_LINE_END_HYPHEN = re.compile(r"([-\u00ad])\n[ \t]*([\w'’]+)")
_WORD_BEFORE = re.compile(r"[\w'’-]*$")
_BLANK_LINES = re.compile(r"\n[ \t]*\n\s*")


def clean_ocr_text(text, min_header_repeats=3):
    """Gallica `complete_text` -> paragraphs of prose separated by blank lines.

    Drops page-number lines, Gallica/BnF source lines and running heads (a title-like line at the
    edge of a page block, repeated there at least `min_header_repeats` times in the book, digits
    aside); undoes line-end hyphenation, also over a page break; turns the long s into s. Lines of
    one paragraph are joined; blank lines separate paragraphs. Whole-book regex passes do the work
    (a Python loop over lines would cost more than tokenizing the book).
    """
    text = drop_source_lines(normalize_chars(text))
    lines = text.splitlines()
    text = "\n".join(lines)  # one kind of line break (OCR has \f, \r...), so the keys line up with `lines`
    blank = [not l.strip() for l in lines] + [True]  # [-1] (before the first line) and past the end: blank
    # header_key for every line at once: one regex pass over the book, not one call per line.
    keys = [k.strip() for k in _NOT_HEADER_WORDS.sub(" ", text).lower().split("\n")]
    keys = [k if 0 < len(l) <= 80 and (blank[i - 1] or blank[i + 1]) else "" for i, (k, l) in enumerate(zip(keys, lines))]
    repeated = {k for k, n in Counter(keys).items() if n >= min_header_repeats and k}
    heads = {l for l in {l for k, l in zip(keys, lines) if k in repeated} if looks_like_running_head(l)}
    body = "\n".join(s for l in lines if l not in heads
                     for s in [l.strip()] if not (s and len(s) <= 12 and is_page_number(s)))
    vocabulary = words_of(text)

    def over_blank(match):  # a word cut at a page's end goes on after the page break
        before = match.string[match.start() - 1: match.start()]
        return match.group(1) + "\n" if before.isalpha() else match.group(0)

    def join(match):
        mark, tail = match.groups()
        start, string = match.start(), match.string
        if not string[start - 1: start].isalpha():
            return match.group(0)
        head_word = _WORD_BEFORE.search(string, max(0, start - 64), start).group(0)
        cut = mark == SOFT_HYPHEN or not keeps_hyphen(head_word, tail, vocabulary)
        return ("" if cut else "-") + tail

    body = _LINE_END_HYPHEN.sub(join, _HYPHEN_OVER_BLANK.sub(over_blank, body)).replace(SOFT_HYPHEN, "")
    paragraphs = (" ".join(p.split()) for p in _BLANK_LINES.split(body))
    return "\n\n".join(p for p in paragraphs if p)


# ---------------------------------------------------------------------------------------------
# The novel's PDF (1c): lines with their positions, page by page.

def _median(values, default):
    values = sorted(values)
    return values[len(values) // 2] if values else default


def novel_paragraphs(pages, edge_share=0.1):
    """pages: list of (page_height, [(x0, y0, x1, y1, text), ...]) in reading order, from pymupdf.

    Returns the book as paragraphs. A line is an edge line when it is the first or last of its
    page and sits in the top or bottom `edge_share` of the page; edge lines that are page numbers
    (any form) or repeated running headers go. Page-number lines in dash or bracket forms go
    wherever they sit. A paragraph starts on an indented line, a dialogue dash, a centred line
    (chapter heading, kept on its own) or after a vertical gap.
    """
    pages = [(h, [(x0, y0, x1, y1, normalize_chars(t).strip()) for x0, y0, x1, y1, t in lines if t.strip()])
             for h, lines in pages]
    edge_keys = []
    for height, lines in pages:
        edges = [l for i, l in enumerate(lines)
                 if (i == 0 and l[1] < edge_share * height) or (i == len(lines) - 1 and l[3] > (1 - edge_share) * height)]
        edge_keys.append([header_key(l[4]) for l in edges])
    headers = repeated_headers(edge_keys)

    body = []  # (x0, y0, x1, y1, text, page_index)
    for page_index, (height, lines) in enumerate(pages):
        for i, (x0, y0, x1, y1, text) in enumerate(lines):
            at_edge = (i == 0 and y0 < edge_share * height) or (i == len(lines) - 1 and y1 > (1 - edge_share) * height)
            if is_page_number(text) and (at_edge or not text.strip().isdigit()):
                continue
            if at_edge and header_key(text) in headers:
                continue
            body.append((x0, y0, x1, y1, text, page_index))
    if not body:
        return []
    left = _median([round(l[0]) for l in body], 0)
    right = max(l[2] for l in body)
    center = (left + right) / 2
    spacing = _median([b[1] - a[1] for a, b in zip(body, body[1:]) if a[5] == b[5] and b[1] > a[1]], 12)
    vocabulary = words_of(" ".join(l[4] for l in body))

    paragraphs, current, previous = [], [], None
    for x0, y0, x1, y1, text, page_index in body:
        centred = x0 > left + 0.1 * (right - left) and abs((x0 + x1) / 2 - center) < 0.05 * (right - left)
        starts = (
            previous is None
            or centred
            or previous[6]  # the previous line was a heading
            or text.startswith(DIALOGUE_DASH) and not ends_with_line_hyphen(previous[4])
            or x0 > left + 0.3 * spacing  # first-line indent
            or (previous[5] == page_index and y0 - previous[1] > 1.6 * spacing)
        )
        if starts and current:
            paragraphs.append(join_lines(current, vocabulary))
            current = []
        current.append(text)
        previous = (x0, y0, x1, y1, text, page_index, centred)
    if current:
        paragraphs.append(join_lines(current, vocabulary))
    return [p for p in paragraphs if p]
