"""chateau: the library behind the numbered scripts of the Kafka-trained TinyLlama.

The scripts at the repository root are the recipes (one per step, read top to bottom); this
package is their shared machinery:

    stages      the stage table: which steps exist, their scripts, folders, inputs, what they produce
    cli         settings from flags, one-line errors and exit codes (the scripts' `run`)
    models      devices, tokenizers, model loading (full, 4-bit), digests
    prepared    the prepared-data format and its one writer (staging, manifest, atomic publish)
    cleaning    text cleaning: Gallica OCR and the novel's PDF lines
    windows     token streams -> fixed-length samples; which book goes to which step and split
    gallica     the recipe of steps 1a and 1b
    novel       reading the novel's PDF with positions (step 1c)
    training    the Trainer, set up once, with the curriculum's callbacks
    fullweight  the full-weight recipe of steps 2a and 2d
    qlora       the QLoRA recipe of steps 2b and 2c, and the merge (measured)
    generation  the sampling settings, loading a stage's model, generating
    lineage     what each stage was made from: the one "already done" rule, stale checks, locks
    gguf_files  GGUF in (a GGUF base model) and out (step 4), checked by transformers' reader
    llama_cpp_check  step 4's check in llama.cpp itself, and llama.cpp's quantizer (subprocesses)
    scoreboard  did each stage move the model the way it should?
    memorization  how much of its training text a model recites (extraction, suffix probability) vs held-out
    monitor     training curves and samples for the notebook
    downloads   fetching only what the curriculum needs (the notebook's section 1)
    memory_plan what each stage needs: GPU memory at its peak and disk, from the model's shape and its settings
    doctor      `python -m chateau.doctor`: what this machine can do for each stage at its defaults
"""

# Every step, the demo and the notebook: no library progress bars ("Loading weights"), none of
# their known deprecation warnings. Here, because the bars read their switches when the libraries
# are imported, and every script imports this package before them.
from chateau.cli import quiet as _quiet

_quiet()
