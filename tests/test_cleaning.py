"""The cleaners on hard cases written by hand."""
import pytest

from chateau.cleaning import (clean_ocr_text, french_score, is_page_number, join_hyphenated, join_lines, normalize_chars,
                      novel_paragraphs, page_number_lines, source_line_numbers, words_of)


@pytest.mark.parametrize("line", ["12", " 12 ", "- 12 -", "– 12 –", "— 12 —", "[12]", "(12)", "-12-", "p. 7", "245"])
def test_page_numbers_in_every_form(line):
    assert is_page_number(line)


@pytest.mark.parametrize("line", ["12 janvier", "— Vous êtes l'arpenteur ?", "1876.", "K.", "[Note]"])
def test_text_is_not_a_page_number(line):
    assert not is_page_number(line)


@pytest.mark.parametrize("left, right, joined", [
    ("le jeune arpen-", "teur arriva", "le jeune arpenteur arriva"),
    ("il viendra peut-", "être demain", "il viendra peut-être demain"),
    ("Dit-", "il vrai ?", "Dit-il vrai ?"),
    ("c'est-à-", "dire que", "c'est-à-dire que"),
    ("là-", "bas", "là-bas"),
    ("ils sont allés au vil\u00ad", "lage", "ils sont allés au village"),
])
def test_hyphens_at_line_ends(left, right, joined):
    assert join_hyphenated(left, right) == joined


def test_book_vocabulary_decides_ambiguous_hyphens():
    # "grand-route" is written whole-with-hyphen elsewhere in the book, so its hyphen stays.
    book = words_of("Il prit la Grand-Route, puis «président» ; l'Été.")
    assert join_hyphenated("la grand-", "route", book) == "la grand-route"
    assert join_hyphenated("la grand-", "route") == "la grandroute"
    assert join_hyphenated("le pré-", "sident", book) == "le président"  # letters beyond ASCII, « » around
    assert {"l'été", "président", "grand-route"} <= {w.decode() for w in book}


def test_hyphen_decisions_in_ocr_text_use_the_book_vocabulary():
    text = "Le vieux mur-\nmure du vent.\n\nOn entendit un murmure.\n\nIl suivit la grand-\nroute, la Grand-Route."
    assert clean_ocr_text(text) == "Le vieux murmure du vent.\n\nOn entendit un murmure.\n\nIl suivit la grand-route, la Grand-Route."


def test_source_and_page_number_lines_are_found_in_a_whole_book():
    lower = "\n".join(["la bnf prête ses livres.", "source : bnf", "- 12 -", "p. 7", "suite 12",
                       "source gallica.bnf.fr / bibliothèque nationale de france", "[245]", "fin"])
    assert source_line_numbers(lower) == {1, 5}  # "la bnf" in prose is no source line
    assert page_number_lines(lower) == {2, 3, 6}


def test_every_line_break_and_space_kind_is_normalized():
    text = "Le jour\r\nse leva\ttôt.\x00\u3000Il\u2005partit.\r\n\r\n12\r\n\fSuite  du\u00a0récit."
    assert clean_ocr_text(text) == "Le jour se leva tôt. Il partit.\n\nSuite du récit."


def test_compounds_on_one_line_stay():
    assert join_lines(["Peut-être, dit-il, c'est-à-dire", "demain."]) == "Peut-être, dit-il, c'est-à-dire demain."


def test_ligatures_spaces_and_long_s():
    assert normalize_chars("ﬁn ﬂeur\u00a0: «\u202foui\u2009»  Applaudiſſoient") == "fin fleur : « oui »  Applaudissoient"


def test_french_score_tells_french_from_english_and_noise():
    fr = french_score("Il était tard lorsque K. arriva au village, qui reposait sous la neige et le froid.")
    en = french_score("It was late when K. arrived at the village, which lay under the snow and the cold.")
    noise = french_score("12 34 || 56 -- 78 ;; 90 %% 11 == 22 ## 33")
    assert fr[1] > 0.25 and en[1] < 0.05 and noise[0] < 0.5


def test_ocr_text_loses_heads_numbers_and_source_lines():
    pages = []
    for n in range(1, 5):
        head = f"{n * 2}   MÉMOIRES D'UN VOYAGEUR" if n % 2 else f"MÉMOIRES D'UN VOYAGEUR   {n * 2 + 1}"
        pages.append(f"{head}\n\nLa diligence s'arrêta devant l'é-\nglise, et le curé descendit.\n\n- {n * 2} -\n"
                     "Source gallica.bnf.fr / Bibliothèque nationale de France")
    text = clean_ocr_text("\n\n".join(pages))
    assert "VOYAGEUR" not in text and "gallica" not in text and "Bibliothèque" not in text
    assert not any(c.isdigit() for c in text)
    assert text.count("La diligence s'arrêta devant l'église, et le curé descendit.") == 4


def test_repeated_prose_lines_are_not_running_heads():
    line = "s'arrêta devant l'église, et le curé descendit avec une"  # a full-width line, no end punctuation
    pages = [f"HISTOIRE\n\nLa diligence\n{line}\nlenteur solennelle.\n\n{n}" for n in range(1, 6)]
    text = clean_ocr_text("\n\n".join(pages))
    assert text.count(line) == 5 and "HISTOIRE" not in text


def test_form_feeds_between_pages_keep_heads_and_lines_aligned():
    pages = [f"CONTES DU SOIR   {n}\n\nLe médecin affirma que le malade guérirait.\n\n- {n} -" for n in range(1, 5)]
    text = clean_ocr_text("\f".join(pages))
    assert "CONTES" not in text and not any(c.isdigit() for c in text)
    assert text.count("Le médecin affirma que le malade guérirait.") == 4


def test_repeated_dialogue_is_not_a_running_head():
    text = "\n\n".join(f"Il se tut.\n— Oui.\nPage suivante numéro {w}." for w in "abcd")
    assert clean_ocr_text(text).count("— Oui.") == 4


def _line(y, text, x=60, width=300):
    return (x, y, x + width, y + 10, text)


def test_novel_paragraphs_from_positions():
    height = 600
    pages = []
    for n in range(1, 5):
        header = _line(20, "LE CHÂTEAU" if n % 2 else "FRANZ KAFKA", x=300 if n % 2 else 60, width=60)
        number = _line(575, ["12", "- 13 -", "— 14 —", "[15]"][n - 1], x=200, width=20)
        body = [
            _line(80, "Il était tard lorsque K. arriva au village, qui repo-", x=75),
            _line(94, "sait sous la neige. Le château demeurait invisible, peut-"),
            _line(108, "être enveloppé de brume.", width=120),
            _line(122, "— Vous êtes l'arpenteur ? demanda le jeune homme."),
            _line(136, "— Oui, dit-il.", width=80),
        ]
        pages.append((height, [header] + body + [number]))
    paragraphs = novel_paragraphs(pages)
    assert paragraphs.count("Il était tard lorsque K. arriva au village, qui reposait sous la neige. "
                            "Le château demeurait invisible, peut-être enveloppé de brume.") == 4
    assert paragraphs.count("— Vous êtes l'arpenteur ? demanda le jeune homme.") == 4
    assert paragraphs.count("— Oui, dit-il.") == 4
    assert len(paragraphs) == 12  # nothing else: no header, no page number


def test_centred_heading_is_its_own_paragraph_and_hyphen_crosses_pages():
    pages = [
        (600, [_line(80, "CHAPITRE II", x=180, width=80), _line(110, "K. regarda longtemps le vil-", x=75)]),
        (600, [_line(80, "lage endormi, puis il rentra.")]),
    ]
    assert novel_paragraphs(pages) == ["CHAPITRE II", "K. regarda longtemps le village endormi, puis il rentra."]
