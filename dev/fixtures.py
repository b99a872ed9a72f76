"""Tiny inputs of the real formats, built here (no download): the demo and the tests use them.

- `models/TinyLlama_v1.1/`: a LlamaForCausalLM of TinyLlama's family (GQA, SwiGLU, RMSNorm,
  RoPE, untied head) shrunk to hidden 64, and a SentencePiece-style BPE tokenizer (Metaspace,
  <unk>/<s>/</s> at ids 0/1/2 like Llama's) trained on French text written below.
- `models/Mistral-7B-v0.1/` (build_mistral, not part of build_project): a MistralForCausalLM of
  Mistral-7B's family (GQA 4:1, sliding window 4096 over 32768 positions, untied head) shrunk to
  hidden 128, and a tokenizer of its own as Mistral's is: SentencePiece-style BPE with byte
  fallback, the 256 byte tokens <0x00>..<0xFF> at ids 3..258, trained without a few characters
  ("œ", "—", "’") that it can then only write in bytes.
- `datasets/French-PD-Books/`: parquet files with Gallica's schema and its noise (running heads,
  page numbers, "Source gallica.bnf.fr / BnF" lines, line-end hyphens, long s, low-OCR books,
  an English book, a tiny book). Each book carries a unique marker word so tests can trace it.
- `Kafka-Le-Chateau.pdf`: an A5 novel with alternating running headers, page numbers in every
  common form, hyphenation at line and page ends, dialogue and centred chapter headings.

    python -m dev.fixtures /tmp/kafka-demo      # builds all three into a project folder
"""
import json
import random
import sys
from pathlib import Path

FRENCH_SENTENCES = [
    "Il était tard lorsque K. arriva au village, qui reposait sous une neige épaisse.",
    "Le château, sur la colline, demeurait invisible, enveloppé de brume et d'obscurité.",
    "K. resta longtemps sur le pont de bois qui mène de la grand-route au village.",
    "L'aubergiste, un homme lent et soucieux, lui offrit une paillasse près du poêle.",
    "— Vous êtes donc l'arpenteur ? demanda le jeune homme avec une politesse étrange.",
    "Frieda le regardait de ses yeux tristes, où brillait pourtant une sorte de défi.",
    "On disait que Klamm ne parlait jamais aux gens du village, ni même à ses secrétaires.",
    "Barnabé apportait des lettres dont personne ne savait au juste qui les avait écrites.",
    "Olga et Amalia vivaient avec leurs parents dans une maison basse, à l'écart du chemin.",
    "Le maire expliqua, non sans peine, qu'on n'avait nul besoin d'un arpenteur au village.",
    "Peut-être, pensa K., qu'il vaudrait mieux attendre le printemps avant d'agir.",
    "Pepi, la petite servante de l'auberge des Messieurs, parlait sans reprendre haleine.",
    "Les fonctionnaires du château travaillaient jour et nuit sur des dossiers innombrables.",
    "« Il faut que je voie Klamm », répéta K., et sa voix se perdit dans le corridor.",
    "La neige tombait toujours ; les chemins disparaissaient sous un voile blanc et lourd.",
    "L'instituteur, un petit homme aux épaules étroites, lui proposa la place de concierge.",
    "C'est-à-dire, ajouta le maire, que votre nomination n'a jamais été tout à fait décidée.",
    "Le soir, les valets buvaient de la bière et chantaient des chansons qu'on n'entendait guère.",
    "K. savait qu'il devait lutter, et que cette lutte ne finirait peut-être jamais.",
    "Elle ouvrit la fenêtre : le froid entra dans la chambre comme une bête silencieuse.",
    "Les aides, Arthur et Jérémie, riaient sans cesse et ne l'aidaient en rien.",
    "Son cœur battait ; il sentait que le château le regardait, lui, l'étranger.",
    "Le messager repartit dans la nuit, et ses pas s'effacèrent aussitôt dans la neige.",
    "Dit-il vrai ? Personne au village n'aurait su le dire, pas même l'aubergiste.",
]
# Gallica's books are other French prose: 19th-century sentences, no names from the novel.
GALLICA_SENTENCES = [
    "La diligence s'arrêta devant l'église, et le curé descendit avec une lenteur solennelle.",
    "Les paysans rentraient des champs au coucher du soleil, chargés de gerbes dorées.",
    "Monsieur le comte reçut ses invités dans le grand salon, sous les lustres de cristal.",
    "La rivière coulait doucement entre les saules, et les enfants jouaient sur la berge.",
    "On parlait beaucoup, à cette époque, des révolutions et des guerres lointaines.",
    "Madame de Villeneuve écrivait chaque soir à sa sœur, qui demeurait à Lyon.",
    "Le notaire relut le testament d'une voix grave ; personne n'osa l'interrompre.",
    "Il y avait dans cette maison une bibliothèque immense, pleine de livres anciens.",
    "Les soldats traversèrent la ville au petit matin, dans un silence inquiétant.",
    "Elle chantait en cousant près de la fenêtre, et sa voix remplissait la rue entière.",
    "Le médecin affirma que le malade guérirait, pourvu qu'on le laissât se reposer.",
    "Au marché, les marchandes criaient le prix des fruits, des œufs et des volailles.",
]
ENGLISH_SENTENCES = [
    "The old house stood at the end of the lane, and nobody had lived there for years.",
    "She walked into the garden with her brother and they talked about the weather.",
]
TITLES = ["Mémoires d'un voyageur", "La Maison du notaire", "Histoire de la Révolution", "Contes du soir"]


def marker_word(index):
    """A word that occurs in one book only, letters only so no cleaner mistakes it for noise."""
    letters = "".join("bcdfghjklmnpqrstvwxz"[int(d)] for d in f"{index:03d}")
    return f"zorg{letters}"


def french_corpus():
    return "\n".join(FRENCH_SENTENCES + GALLICA_SENTENCES + ENGLISH_SENTENCES + TITLES)


# ---------------------------------------------------------------------------------------------
def build_tokenizer(out_dir, vocab_size=512):
    """A Llama-style tokenizer trained here: BPE over Metaspace ("▁") pieces, ids 0/1/2 = <unk>/<s>/</s>."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    text = french_corpus() + "\n" + " ".join(marker_word(i) for i in range(40)) + " 0123456789 -–—[]()«»;:!?.,'’"
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
                                  initial_alphabet=["\n"])  # paragraphs are separated by blank lines
    tokenizer.train_from_iterator(text.splitlines() * 3, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        model_max_length=2048, add_bos_token=False, add_eos_token=False,
    )
    wrapped.save_pretrained(out_dir)
    return wrapped


def build_model(out_dir, vocab_size=512, seed=0):
    """TinyLlama_v1.1's architecture (22 layers, hidden 2048, 32 heads / 4 KV heads, 5632) shrunk.
    Every projection's output is a multiple of 32, as bitsandbytes' 4-bit layers need."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    return model


# ---------------------------------------------------------------------------------------------
# A Mistral-architecture base model, beside the TinyLlama one: Mistral-7B-v0.1's layout shrunk.
MISTRAL_MODEL = "models/Mistral-7B-v0.1"
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]
# Characters of the French text left out of the Mistral tokenizer's training text: they are in no
# piece of its vocabulary, so it writes them in byte tokens (as Mistral's own does with rare ones).
MISTRAL_BYTE_ONLY = "œ—’"
MISTRAL_QK_SCALE = 4.0


def build_mistral_tokenizer(out_dir, vocab_size=640):
    """Mistral's kind of tokenizer trained here: SentencePiece-style BPE over Metaspace ("▁") pieces
    with byte fallback, <unk>/<s>/</s> at ids 0/1/2 and the 256 byte tokens <0x00>..<0xFF> at ids
    3..258 (in the model's vocabulary, not added tokens, as in Mistral's tokenizer.json), then the
    learned pieces. Saved as a LlamaTokenizer with BOS added, as Mistral-7B-v0.1's folder is: the
    transformers tokenizer rebuilds its pipeline (Metaspace "first", no split; ByteFallback decoder)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizer

    text = french_corpus() + "\n" + " ".join(marker_word(i) for i in range(40)) + " 0123456789 -–[]()«»;:!?.,'"
    text = text.translate({ord(c): " " for c in MISTRAL_BYTE_ONLY})
    trained = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    # Pieces never cross a word's "▁" (SentencePiece's split_by_whitespace); no newline in the
    # alphabet: "\n" is the byte token <0x0A>, as in Mistral's vocabulary.
    trained.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", *BYTE_TOKENS],
                                  show_progress=False)
    trained.train_from_iterator(text.splitlines() * 3, trainer=trainer)
    model = json.loads(trained.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    wrapped = LlamaTokenizer(vocab=model["vocab"], merges=merges, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                             add_bos_token=True, add_eos_token=False, model_max_length=32768)
    wrapped.save_pretrained(out_dir)
    return wrapped


def build_mistral_model(out_dir, vocab_size=640, seed=0, sliding_window=4096, max_position_embeddings=32768):
    """Mistral-7B-v0.1's architecture (32 layers, hidden 4096, 32 heads / 8 KV heads, 14336,
    sliding window 4096 over 32768 positions) shrunk: 4 heads of 32 / 1 KV head (GQA 4:1), MLP 3.5 x
    hidden. Every projection's output is a multiple of 32, as bitsandbytes' 4-bit layers need."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    config = MistralConfig(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=448, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=32, max_position_embeddings=max_position_embeddings,
        sliding_window=sliding_window, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2,
    )
    model = MistralForCausalLM(config)
    # Q and K x4: attention as sharp as a trained model's. At the initial scale (0.02) every
    # attention score is ~0 and a random model attends uniformly, so a wrong rotary layout in an
    # export would barely change its next tokens; here it changes ~40% of them.
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(MISTRAL_QK_SCALE)
            layer.self_attn.k_proj.weight.mul_(MISTRAL_QK_SCALE)
    model.save_pretrained(out_dir)
    return model


def build_mistral(project_dir, folder=MISTRAL_MODEL, vocab_size=640, seed=0):
    """The Mistral-architecture base model and its tokenizer in `project_dir`/`folder`, laid out
    as build_project lays out TinyLlama's (config.json, model.safetensors, tokenizer files).
    Returns the folder."""
    model_dir = Path(project_dir) / folder
    tokenizer = build_mistral_tokenizer(model_dir, vocab_size)
    build_mistral_model(model_dir, vocab_size=len(tokenizer), seed=seed)
    return model_dir


# ---------------------------------------------------------------------------------------------
def _ocr_page_lines(rng, sentences, marker, n_sentences=8, width=60):
    words = " ".join(rng.choice(sentences) for _ in range(n_sentences)).split()
    words.insert(rng.randrange(len(words)), marker)
    return ocr_lines(rng, words, width)


def ocr_lines(rng, words, width=60):
    """Words set in lines of `width` characters as OCR reads a printed page: long words are
    sometimes cut at the line end with the printer's hyphen."""
    lines, line = [], ""
    for word in words:
        if len(line) + len(word) + 1 > width:
            if len(word) >= 8 and word.isalpha() and rng.random() < 0.5:  # OCR keeps the printer's hyphens
                cut = len(word) // 2
                lines.append(f"{line} {word[:cut]}-".strip())
                line = word[cut:]
                continue
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return lines


def gallica_book(rng, index, title, pages=4, sentences=GALLICA_SENTENCES, sentences_per_page=8):
    """One book's `complete_text` as Gallica's OCR gives it: every page has its running head,
    its number and the source line; the long s appears; words are hyphenated at line ends.
    A real page holds ~2,000 characters: 24 sentences per page (8 keep the test fixtures small)."""
    marker = marker_word(index)
    out = []
    for page in range(1, pages + 1):
        head = f"{page * 2}   {title.upper()}" if page % 2 else f"{title.upper()}   {page * 2 + 1}"
        body = _ocr_page_lines(rng, sentences, marker, sentences_per_page)
        body = [l.replace("sse", "ſſe", 1) if rng.random() < 0.1 else l for l in body]
        out.append("\n".join([head, ""] + body + ["", f"- {page * 2} -" if page % 3 else str(page * 2),
                                                   "Source gallica.bnf.fr / Bibliothèque nationale de France"]))
    return "\n\n".join(out)


def build_gallica(out_dir, n_files=2, books_per_file=24, pages=4, seed=0, sentences_per_page=8):
    """Parquet files with the real schema. Returns {file_id: "kept" | "low_ocr" | "english" | "tiny"}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    kinds = {}
    for f in range(n_files):
        rows = []
        for b in range(books_per_file):
            index = f * books_per_file + b
            file_id = f"bpt6k{100000 + index * 37}"
            kind = "kept"
            ocr = str(rng.choice([85, 92, 96, 99]))
            title = rng.choice(TITLES)
            text = gallica_book(rng, index, title, pages, sentences_per_page=sentences_per_page)
            if b % 6 == 1:
                kind, ocr = "low_ocr", rng.choice(["45", "61", "12"])
            elif b % 6 == 3 and f == 0:
                kind, text = "english", gallica_book(rng, index, "The Old House", pages, ENGLISH_SENTENCES, sentences_per_page)
            elif b % 6 == 5 and f == 0:
                kind, text = "tiny", f"{marker_word(index)} Fin."
            elif b % 6 == 5:
                ocr = rng.choice([None, "", "n/a"])  # missing or odd OCR scores: kept out, counted
                kind = "odd_ocr"
            kinds[file_id] = kind
            rows.append({
                "file_id": file_id, "ocr": ocr, "title": title, "date": rng.choice(["1876", "18??", "1902"]),
                "author": rng.choice([None, "Anonyme", "Victor Dupont"]), "page_count": pages,
                "word_count": len(text.split()), "character_count": len(text), "complete_text": text,
            })
        sub = out_dir / ("nested" if f % 2 else ".")  # "parquet files at any depth"
        sub.mkdir(exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), sub / f"gallica_mono_{f}.parquet")
    return kinds


# ---------------------------------------------------------------------------------------------
HEADERS = ("FRANZ KAFKA", "LE CHÂTEAU")
PAGE_NUMBER_FORMS = ("{}", "- {} -", "– {} –", "— {} —", "[{}]")


def novel_source(n_chapters=3, paragraphs_per_chapter=9, seed=1):
    """The novel as (kind, text) items: ("heading", ...) or ("paragraph", ...)."""
    rng = random.Random(seed)
    names = ["CHAPITRE PREMIER", "CHAPITRE II", "CHAPITRE III", "CHAPITRE IV", "CHAPITRE V"]
    items = []
    for c in range(n_chapters):
        items.append(("heading", names[c]))
        for p in range(paragraphs_per_chapter):
            if p % 3 == 2:
                items.append(("paragraph", "— " + rng.choice(FRENCH_SENTENCES).lstrip("— ")))
            else:
                items.append(("paragraph", " ".join(rng.choice(FRENCH_SENTENCES) for _ in range(rng.randint(3, 6)))))
    return items


def build_novel_pdf(path, items=None, fontsize=10.5, headers=HEADERS):
    """Lay the novel out on A5 pages, as a printer would, and save it as a PDF with a text layer:
    `headers` alternate as running heads on left and right pages."""
    import pymupdf

    items = items or novel_source()
    font = pymupdf.Font("tiro")  # Times, built into pymupdf, covers French (é, œ, « », —)
    width, height, margin, leading = 420, 595, 50, fontsize * 1.35
    text_width = width - 2 * margin
    lines = []  # (x, text, kind) then page breaks decided by height
    for kind, text in items:
        if kind == "heading":
            w = font.text_length(text, fontsize)
            lines += [("gap", None), (margin + (text_width - w) / 2, text), ("gap", None)]
            continue
        indent, line = 15, ""
        for word in text.split():
            candidate = f"{line} {word}".strip()
            if font.text_length(candidate, fontsize) <= text_width - indent:
                line = candidate
                continue
            # Break: hyphenate long words the way a typesetter does (compounds at their own hyphen).
            head, tail = None, None
            if "-" in word.strip(",.;:!?") and not word.startswith("—"):
                head, tail = word.split("-", 1)[0] + "-", word.split("-", 1)[1]
            elif len(word.strip(",.;:!?»")) >= 8 and word.isalpha():
                cut = len(word) // 2
                head, tail = word[:cut] + "-", word[cut:]
            if head and font.text_length(f"{line} {head}".strip(), fontsize) <= text_width - indent:
                lines.append((margin + indent, f"{line} {head}".strip()))
                line = tail
            else:
                lines.append((margin + indent, line))
                line = word
            indent = 0
        lines.append((margin + indent, line))

    doc = pymupdf.open()
    top, bottom = margin + 20, height - margin - 20
    page, y, number = None, None, 0
    for x, text in lines:
        if page is None or y > bottom:
            number += 1
            page = doc.new_page(width=width, height=height)
            header = headers[number % 2]
            hx = margin if number % 2 == 0 else width - margin - font.text_length(header, 8)
            writer = pymupdf.TextWriter(page.rect)
            writer.append((hx, margin - 10), header, font=font, fontsize=8)
            num = PAGE_NUMBER_FORMS[number % len(PAGE_NUMBER_FORMS)].format(number + 4)
            writer.append(((width - font.text_length(num, 9)) / 2, height - margin + 15), num, font=font, fontsize=9)
            writer.write_text(page)
            y = top
        if x == "gap":
            y += leading
            continue
        writer = pymupdf.TextWriter(page.rect)
        writer.append((x, y), text, font=font, fontsize=fontsize)
        writer.write_text(page)
        y += leading
    doc.save(path)
    return items


def build_project(project_dir, n_files=2, books_per_file=24, pages=4):
    """All three inputs in a project folder, as the notebook would place the real ones."""
    from chateau import stages
    project_dir = Path(project_dir)
    model_dir = project_dir / stages.BASE_MODEL
    tokenizer = build_tokenizer(model_dir)
    build_model(model_dir, vocab_size=len(tokenizer))
    kinds = build_gallica(project_dir / stages.GALLICA_DIR, n_files, books_per_file, pages)
    items = build_novel_pdf(project_dir / stages.NOVEL_PDF)
    return {"book_kinds": kinds, "novel": items}


# The tiny settings that go with these inputs are the run profile profiles/tiny/ (sizes shrunk,
# rates raised so that a 100k-parameter model learns in seconds). The demo and the tests run the
# scripts with them, in the curriculum's order.
def tiny_steps():
    from chateau import stages
    from dev.runner import profile
    return [(s.script, profile("tiny", s.name)) for s in stages.TABLE if s.kind in ("prepare", "train")
            and s.name in CURRICULUM]


CURRICULUM = ("1a", "1b", "1c", "2a", "2b", "2c")  # the default path; 2d is the alternative imprint
TINY_STEPS = tiny_steps()
TINY_CONTINUE = ["--config", str(Path(__file__).resolve().parents[1] / "profiles" / "tiny" / "3.json")]


def tiny_flags(script):
    from chateau import stages
    from dev.runner import profile
    return profile("tiny", stages.stage_of_script(script))


if __name__ == "__main__":
    build_project(sys.argv[1] if len(sys.argv) > 1 else "/tmp/kafka-demo")
    print(f"tiny inputs written under {sys.argv[1] if len(sys.argv) > 1 else '/tmp/kafka-demo'}")
