"""Text cleaning for the novel's PDF (1c) and Gallica's OCR (1a, 1b): pure functions, unit-tested.

What the model reads is what it writes, so everything a reader would not call prose goes:
page numbers, running headers, Gallica's source lines, line-end hyphenation, odd spaces.
"""
import itertools
import re
import unicodedata
from collections import Counter
from typing import NamedTuple

# Page numbers as printers set them: "12", "- 12 -", "– 12 –", "— 12 —", "[12]", "(12)", "p. 12".
_PAGE_NUMBER_FORM = r"(?:p\.{space})?[\[(\-–—]?{space}\d{{1,4}}{space}[\])\-–—]?"
PAGE_NUMBER = re.compile(r"^\s*" + _PAGE_NUMBER_FORM.format(space=r"\s*") + r"\s*$", re.IGNORECASE)
# Gallica prints its source on every page: "Source gallica.bnf.fr / Bibliothèque nationale de France".
GALLICA_SOURCE = re.compile(r"gallica\.bnf\.fr|biblioth[eè]que nationale de france|^ *source *:? *bnf *$",
                            re.IGNORECASE | re.MULTILINE)
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
    # Every space inside a line becomes " " (line breaks are the business of splitlines).
    **{space: " " for space in "\t\x1f\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
                                "\u200a\u202f\u205f\u3000"},
    "\u200b": "", "\ufeff": "", "\x00": "",
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


# Digits, brackets, dashes, dots and spaces (normalize_chars has made every space inside a line " ").
_NOT_HEADER_WORDS = re.compile(r"[\d\[\]()\-–—. ]+")


def header_keys(lines):
    """What stays of running headers once their page numbers are gone: "12  LE CHÂTEAU" -> "le
    château". One regex pass over all the lines at once (a call per line cost three times more)."""
    return [key.strip() for key in _NOT_HEADER_WORDS.sub(" ", "\n".join(lines)).lower().split("\n")]


def header_key(line):
    return header_keys([line])[0]


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
    typesetter cut (drop it). A form written whole elsewhere in the book (`words_of`) wins; then
    the hyphenated form, a known compound tail, or a head already hyphenated ("c'est-à-" + "dire")."""
    joined, hyphenated = (head_word + tail).lower().encode(), (head_word + "-" + tail).lower().encode()
    if joined in vocabulary:
        return False
    return hyphenated in vocabulary or tail.lower() in COMPOUND_TAILS or "-" in head_word


# The book's word forms as a set of lower-cased UTF-8 words: ASCII punctuation and « » become spaces,
# then split. Bytes, because bytes.translate is a table lookup (a regex findall of the words cost a
# seventh of tokenizing the book); letters beyond ASCII are bytes >= 128 and stay in their words.
_WORD_BYTES = bytes(c if c >= 128 or chr(c).isalnum() or chr(c) in "'-" else ord(" ") for c in range(256))


def words_of(text, lower_cased=False):
    """The book's own word forms, hyphenated compounds included, for `keeps_hyphen`."""
    text = text if lower_cased else text.lower()
    return frozenset(text.replace("«", " ").replace("»", " ").encode().translate(_WORD_BYTES).split())


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


_NOT_LETTERS = re.compile(r"[\W\d_]+")
_FRENCH_WORD = re.compile(r"[a-zàâçéèêëîïôûùüÿœæ]+")


def french_score(text, sample_chars=10000):
    """(share of letters among non-space characters, share of French function words among words),
    on `sample_chars` characters from the middle of the book (its start is often a title page or
    a table). French prose scores ~0.95 and ~0.35; English ~0.03 on the second; tables, indexes
    and garbled OCR fall on the first."""
    middle = max(0, len(text) // 2 - sample_chars // 2)
    sample = text[middle:middle + sample_chars]
    visible = "".join(sample.split())
    letters = len(_NOT_LETTERS.sub("", visible)) / max(1, len(visible))
    words = _FRENCH_WORD.findall(sample.lower())
    function = sum(w in FRENCH_FUNCTION_WORDS for w in words) / max(1, len(words))
    return letters, function


def source_line_numbers(lower_text):
    """Numbers of the lines that name Gallica/BnF as their source, in a lower-cased text. Plain
    substring searches find the candidates (a case-insensitive regex over the whole book cost a
    tenth of tokenizing it); the regex confirms each candidate line ("bnf" could be a word)."""
    hits = (at for mark in ("bnf", "nationale de france") for at in _find_all(lower_text, mark))
    starts = sorted({lower_text.rfind("\n", 0, at) + 1 for at in hits})  # a line with both marks once
    confirmed = [at for at in starts if GALLICA_SOURCE.search(lower_text, at, _line_end(lower_text, at))]
    return set(line_numbers(lower_text, confirmed))


def _line_end(text, at):
    end = text.find("\n", at)
    return len(text) if end < 0 else end


def _find_all(text, needle):
    at = text.find(needle)
    while at >= 0:
        yield at
        at = text.find(needle, at + len(needle))


# PAGE_NUMBER for the lines of a whole lower-cased book at once, each line preceded by its "\n"
# (a literal first character lets the regex engine jump from line to line; " *", not "\s*", so that
# a match never spans two lines).
_PAGE_NUMBER_LINE = re.compile(r"\n" + _PAGE_NUMBER_FORM.format(space=" *") + r"(?=\n|\Z)")


def page_number_lines(lower_text):
    """Numbers of the lines that are page numbers, in any of PAGE_NUMBER's forms."""
    text = "\n" + lower_text
    return set(line_numbers(text, [m.start() for m in _PAGE_NUMBER_LINE.finditer(text)]))


def line_numbers(text, positions):
    """The 0-based line of each of the (sorted) character positions in `text`."""
    numbers, line, counted_to = [], 0, 0
    for at in positions:
        line += text.count("\n", counted_to, at)
        counted_to = at
        numbers.append(line)
    return numbers


_DIGIT = re.compile(r"\d")


def looks_like_running_head(line):
    """Heads are titles: a page number beside them, a short line without closing punctuation
    ("Histoire de France") or capitals ("MÉMOIRES D'UN VOYAGEUR"). A repeated line of dialogue
    ("— Oui.") is none of these, nor is a full-width line of prose (over 50 characters)."""
    line = line.strip()
    if ends_with_line_hyphen(line):
        return False
    if _DIGIT.search(line) or (len(line) <= 50 and not line.endswith((".", "!", "?", "»", "…", ":", ";", ","))):
        return True
    letters = [c for c in line if c.isalpha()]
    return sum(c.isupper() for c in letters) >= 0.6 * max(1, len(letters))


def running_heads(lines, min_repeats=3):
    """Numbers of the lines that are running heads: title-like, at the edge of a page block (next to
    a blank line, or the book's first or last line), and repeated there at least `min_repeats`
    times, digits aside ("12  HISTOIRE" and "HISTOIRE  13" are one head). `lines` are stripped.
    Only edge lines are looked at: a fraction of a book's lines."""
    blank = [i for i, line in enumerate(lines) if not line]
    edges = sorted(i for i in {i for b in blank for i in (b - 1, b + 1)} | {0, len(lines) - 1}
                   if 0 <= i < len(lines) and 0 < len(lines[i]) <= 80)
    keys = dict(zip(edges, header_keys([lines[i] for i in edges])))
    repeated = {key for key, n in Counter(keys.values()).items() if key and n >= min_repeats}
    candidates = {i: lines[i] for i, key in keys.items() if key in repeated}
    heads = {line for line in set(candidates.values()) if looks_like_running_head(line)}  # once per distinct line
    return {i for i, line in candidates.items() if line in heads}


# Patterns start with the hyphen itself, so the regex engine skips ahead to candidates instead of
# trying every position (a leading lookbehind made these passes cost as much as the tokenizer).
_HYPHEN_OVER_BLANK = re.compile(r"([-\u00ad])\n(?:\n)+(?=[^\W\d_])")
_LINE_END_HYPHEN = re.compile(r"([-\u00ad])\n([\w'’]+)")
_WORD_BEFORE = re.compile(r"[\w'’-]*$")
_BLANK_LINES = re.compile(r"\n\n+")
_SPACES = re.compile(" {2,}")


def clean_ocr_text(text, min_header_repeats=3):
    """Gallica `complete_text` -> paragraphs of prose separated by blank lines.

    Drops page-number lines, Gallica/BnF source lines and running heads (see `running_heads`);
    undoes line-end hyphenation, also over a page break; turns the long s into s. Lines of one
    paragraph are joined; blank lines separate paragraphs. Its cost is measured against the
    tokenizer's (bench/prepare_bench.py): whole-book passes in C (str methods, a few regexes), and
    Python loops only over the lines that need a decision.
    """
    lines = [line.strip() for line in normalize_chars(text).splitlines()]  # OCR breaks lines with \f, \r... too
    lower = "\n".join(lines).lower()
    drop = sorted(running_heads(lines, min_header_repeats) | source_line_numbers(lower) | page_number_lines(lower))
    kept = itertools.chain.from_iterable(lines[a + 1:b] for a, b in zip([-1] + drop, drop + [len(lines)]))
    body = "\n".join(kept)
    vocabulary = None

    def over_blank(match):  # a word cut at a page's end goes on after the page break
        before = match.string[match.start() - 1: match.start()]
        return match.group(1) + "\n" if before.isalpha() else match.group(0)

    def join(match):
        nonlocal vocabulary
        mark, tail = match.groups()
        start, string = match.start(), match.string
        if not string[start - 1: start].isalpha():
            return match.group(0)
        if mark == SOFT_HYPHEN:
            return tail
        # The word before the hyphen: its last whitespace-separated piece, then its word characters.
        head_word = _WORD_BEFORE.search(string[max(0, start - 64):start].rsplit(maxsplit=1)[-1]).group(0)
        vocabulary = vocabulary or words_of(lower, lower_cased=True)
        return ("-" if keeps_hyphen(head_word, tail, vocabulary) else "") + tail

    body = _LINE_END_HYPHEN.sub(join, _HYPHEN_OVER_BLANK.sub(over_blank, body)).replace(SOFT_HYPHEN, "")
    # Paragraphs: blank lines -> one "\0" mark, line breaks -> spaces, runs of spaces -> one.
    body = _BLANK_LINES.sub("\0", body).replace("\n", " ")
    if "  " in body:
        body = _SPACES.sub(" ", body)
    return body.replace("\0", "\n\n").strip()


# ---------------------------------------------------------------------------------------------
# The novel's PDF (1c): lines with their positions, page by page.

def _median(values, default):
    values = sorted(values)
    return values[len(values) // 2] if values else default


class PdfLine(NamedTuple):
    """One line of a PDF page, with its box in points (y grows downwards)."""
    x0: float
    y0: float
    x1: float
    y1: float
    text: str


class PdfPage(NamedTuple):
    height: float
    lines: list  # [PdfLine], top to bottom


class BodyLine(NamedTuple):
    """A line of the book's text once page furniture is gone, with the page it was on."""
    line: PdfLine
    page: int
    centred: bool = False


def _at_page_edge(index, line, lines, height, edge_share):
    """First line in the top, or last line in the bottom, `edge_share` of its page."""
    return ((index == 0 and line.y0 < edge_share * height)
            or (index == len(lines) - 1 and line.y1 > (1 - edge_share) * height))


def novel_paragraphs(pages, edge_share=0.1):
    """pages: [PdfPage(height, [PdfLine, ...])] in reading order (novel.read_pdf_pages).

    Returns the book as paragraphs. A line is an edge line when it is the first or last of its
    page and sits in the top or bottom `edge_share` of the page; edge lines that are page numbers
    (any form) or repeated running headers go. Page-number lines in dash or bracket forms go
    wherever they sit. A paragraph starts on an indented line, a dialogue dash, a centred line
    (chapter heading, kept on its own) or after a vertical gap.
    """
    pages = [PdfPage(height, [line._replace(text=normalize_chars(line.text).strip())
                              for line in map(PdfLine._make, lines) if line.text.strip()])
             for height, lines in pages]
    edge_keys = [[header_key(line.text) for i, line in enumerate(page.lines)
                  if _at_page_edge(i, line, page.lines, page.height, edge_share)] for page in pages]
    headers = repeated_headers(edge_keys)

    body = []
    for page_index, page in enumerate(pages):
        for i, line in enumerate(page.lines):
            at_edge = _at_page_edge(i, line, page.lines, page.height, edge_share)
            if is_page_number(line.text) and (at_edge or not line.text.strip().isdigit()):
                continue
            if at_edge and header_key(line.text) in headers:
                continue
            body.append(BodyLine(line, page_index))
    if not body:
        return []
    left = _median([round(b.line.x0) for b in body], 0)
    right = max(b.line.x1 for b in body)
    center = (left + right) / 2
    spacing = _median([b.line.y0 - a.line.y0 for a, b in zip(body, body[1:])
                       if a.page == b.page and b.line.y0 > a.line.y0], 12)
    vocabulary = words_of(" ".join(b.line.text for b in body))

    paragraphs, current, previous = [], [], None
    for line, page_index, _ in body:
        centred = line.x0 > left + 0.1 * (right - left) and abs((line.x0 + line.x1) / 2 - center) < 0.05 * (right - left)
        starts = (
            previous is None
            or centred
            or previous.centred  # the previous line was a heading
            or line.text.startswith(DIALOGUE_DASH) and not ends_with_line_hyphen(previous.line.text)
            or line.x0 > left + 0.3 * spacing  # first-line indent
            or (previous.page == page_index and line.y0 - previous.line.y0 > 1.6 * spacing)
        )
        if starts and current:
            paragraphs.append(join_lines(current, vocabulary))
            current = []
        current.append(line.text)
        previous = BodyLine(line, page_index, centred)
    if current:
        paragraphs.append(join_lines(current, vocabulary))
    return [p for p in paragraphs if p]
