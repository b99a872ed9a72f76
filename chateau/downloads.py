"""Section 1 of the notebook: fetch only what the curriculum needs, resumably and idempotently.

- a base model (TinyLlama/TinyLlama_v1.1 by default, or another of BASES): safetensors, config
  and tokenizer files only, each into its own folder under models/;
- from PleIAs/French-PD-Books (~60 GB in files gallica_mono_<N>.parquet of ~2,000 books,
  ~400 MB each) only as many files as steps 1a and 1b need (plan_gallica_files);
- the novel's PDF, or a clear message saying where to put it.
A Hugging Face token, if needed, is read from $HF_TOKEN: never printed, never written to disk.
"""
import math
import os
import re
import urllib.request
from dataclasses import dataclass

from tqdm.auto import tqdm

from chateau import gallica, prepared, stages
from chateau.cli import StageError

MODEL_FILES = ["*.safetensors", "*.json", "tokenizer.model"]  # never the pickled *.bin a repository may also hold


@dataclass(frozen=True)
class Base:
    """A base model the project knows how to fetch, and the path of stages it takes."""
    repo: str       # on the Hugging Face hub
    folder: str     # under the project folder: what --base-model names
    license: str    # the base's (the model card's front matter)
    path: str       # the stages it takes
    download_gb: float  # its safetensors, as the hub serves them
    why: str


# One place for what the README's table of bases and the notebook's downloads say.
BASES = {
    "TinyLlama": Base("TinyLlama/TinyLlama_v1.1", stages.BASE_MODEL, "apache-2.0",
                      "1a, 1b, 1c → 2a → 2b → 2c (or 2a → 2d)", 4.4,
                      "the default: 1.1B parameters, small enough that every weight trains on a 12 GB card (2a, 2d)"),
    "Mistral-7B": Base("mistralai/Mistral-7B-v0.1", "models/Mistral-7B-v0.1", "apache-2.0", "1a, 1c → 2e → 2f", 14.5,
                       "the best French of the first public attempt's models; 7B: QLoRA only on 12 GB (no 2a), "
                       "and its merge runs on the CPU (~15 GB of RAM)"),
    "CroissantLLM": Base("croissantllm/CroissantLLMBase", "models/CroissantLLMBase", "mit",
                         "1a, 1b, 1c → 2a → 2b → 2c (or 2a → 2d), or 1a, 1c → 2e → 2f", 5.4,
                         "1.3B parameters trained on French and English in equal parts (2,048 context): French "
                         "already, so 2a's days are optional (2e → 2f skip it)"),
}
MODEL_REPO = BASES["TinyLlama"].repo


def base_of_folder(folder):
    """The known Base whose folder is `folder` (a --base-model value), or None for another model."""
    return next((b for b in BASES.values() if b.folder == str(folder)), None)
CORPUS_REPO = "PleIAs/French-PD-Books"
NOVEL_URL = "https://ekladata.com/QAPtMO27HuI4V0hLEhOUd3sv0Nw/Kafka-Le-Chateau.pdf"


@dataclass
class CorpusAssumptions:
    """What one Gallica parquet file yields, as planning assumptions (each can be overridden).
    A file holds ~2,000 books; half go to each step (1a/1b split by file_id); ~60% pass the OCR
    (>= 80), language and length filters; a kept book averages ~55k words ~ 88k tokens, cleaned."""
    books_per_file: int = 2000
    kept_share: float = 0.6
    mean_book_tokens: int = 88_000
    margin: float = 1.2  # 20% more files than the estimate, for short books and a noisy yield


def samples_per_book(seq_len, cap, assumptions):
    return min(cap, assumptions.mean_book_tokens // seq_len)


def files_needed(steps, assumptions=CorpusAssumptions()):
    """Files for all `steps`: [(n_samples, seq_len, max_samples_per_book), ...], one per prepare step.
    Each step sees half the books of every file, so the neediest step sets the count."""
    per_step = [n / (assumptions.books_per_file * 0.5 * assumptions.kept_share * samples_per_book(seq, cap, assumptions))
                for n, seq, cap in steps]
    return math.ceil(max(per_step) * assumptions.margin)


def planned_file_count(assumptions=CorpusAssumptions()):
    """Files for steps 1a and 1b at their default (real curriculum) settings."""
    steps = [settings() for settings in gallica.STEP_SETTINGS.values()]
    return files_needed([(s.n_samples, s.seq_len, s.max_samples_per_book) for s in steps], assumptions)


def file_number(name):
    match = re.search(r"gallica_mono_(\d+)\.parquet$", name)
    return int(match.group(1)) if match else None


def plan_gallica_files(listing, n_files):
    """The first `n_files` gallica_mono_<N>.parquet files of a repository listing, by N."""
    parquet = sorted((f for f in listing if file_number(f) is not None), key=file_number)
    if len(parquet) < n_files:
        raise StageError(f"the corpus lists {len(parquet)} parquet files, fewer than the {n_files} planned")
    return parquet[:n_files]


def hf_token():
    return os.environ.get("HF_TOKEN") or None


def download_model(project, base="TinyLlama"):
    """A base model of BASES into its own folder, only the files needed (idempotent: present files
    are not fetched again; an interrupted download resumes)."""
    from huggingface_hub import snapshot_download
    if base not in BASES:
        raise StageError(f"unknown base {base!r}: one of {', '.join(BASES)} (or put any Llama- or Mistral-architecture "
                         f"model's folder under models/ and name it with --base-model)")
    dest = project / BASES[base].folder
    if (dest / "config.json").exists() and list(dest.glob("*.safetensors")):
        return f"model already in {dest}"
    snapshot_download(BASES[base].repo, local_dir=dest, allow_patterns=MODEL_FILES, token=hf_token())
    return f"model downloaded to {dest}"


def is_prepared(project, stage):
    return prepared.read_manifest(stages.folder(project, stage)) is not None


def download_gallica(project, n_files, listing=None):
    """The planned parquet files; skipped once steps 1a and 1b have prepared their data."""
    from huggingface_hub import HfApi, hf_hub_download
    if is_prepared(project, "1a") and is_prepared(project, "1b"):
        return "Gallica not needed: steps 1a and 1b are already prepared"
    dest = project / stages.GALLICA_DIR
    listing = listing if listing is not None else HfApi().list_repo_files(CORPUS_REPO, repo_type="dataset", token=hf_token())
    planned = plan_gallica_files(listing, n_files)
    missing = [f for f in planned if not (dest / f).exists()]
    for name in missing:  # hf_hub_download resumes a partial file and shows a progress bar
        hf_hub_download(CORPUS_REPO, name, repo_type="dataset", local_dir=dest, token=hf_token())
    return f"{len(planned)} parquet files in {dest} ({len(missing)} downloaded now)"


def download_novel(project, url=NOVEL_URL):
    """The PDF, resumable (.part + HTTP Range), or a message saying where to put it."""
    dest = project / stages.NOVEL_PDF
    if dest.exists():
        return f"novel already in {dest}"
    part = dest.with_suffix(".pdf.part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            resumed = have and response.status == 206  # 200: the server ignores Range, start over
            size = response.headers.get("Content-Length")
            with part.open("ab" if resumed else "wb") as f, tqdm(
                    total=int(size) + (have if resumed else 0) if size else None, initial=have if resumed else 0,
                    unit="B", unit_scale=True, desc=dest.name) as progress:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    progress.update(len(chunk))
    except OSError as error:
        return (f"could not download the novel ({error}): put the French translation of Le Château as a PDF "
                f"with a text layer at {dest}")
    if not part.read_bytes()[:5] == b"%PDF-":
        part.unlink()
        return f"{url} did not return a PDF: put the novel at {dest} by hand"
    part.rename(dest)
    return f"novel downloaded to {dest}"
