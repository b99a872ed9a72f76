"""What each stage needs: GPU memory (a train step's peak, per GPU) and disk (what a stage writes),
estimated from the model's shape (the base model's config.json, else TinyLlama_v1.1's) and the
stage's recipe and settings. The one place these numbers are computed: the doctor
(`python -m chateau.doctor`) compares them with the machine. Estimates from the arithmetic below,
not measurements: `python -m bench.train_bench` measures the peaks on a GPU.

The defaults are the numbered scripts' own Settings (`stage_defaults`): importing a train script
imports transformers' Trainer (a few seconds), which the container's start pays in the background.

Where the memory goes (per GPU, bytes per parameter P or per element):
  full weights (2a, 2d; chateau/fullweight.py): bf16 weights 2 + bf16 gradients 2 + torchao's
    8-bit AdamW 2 (two 8-bit moments, an fp32 scale per 256 values) per parameter; the residual
    stream in bf16.
  QLoRA (2b, 2c on 2a; 2e, 2f on the base itself; chateau/qlora.py): NF4 matrices ~0.52 B (4 bits
    + double-quantized block scales); embeddings, LM head and norms in fp32
    (prepare_model_for_kbit_training upcasts them); LoRA factors 16 B each (fp32 weight, gradient,
    AdamW's two fp32 moments), at the rank of the LoRA trained: a new one's --lora-r, a continued
    one's that of the adapter it continues (2f: 2e's 16). The upcast fp32 norms
    turn the whole residual stream fp32 (x fp32-weight = fp32; bitsandbytes casts each 4-bit
    layer's output back to its input's dtype), so the checkpointed layer inputs and the recomputed
    layer are fp32.
  Activations, with gradient checkpointing: every layer's input (L x B x T x hidden), then the
    largest of three moments that never overlap: the loss's backward (12 B per logit: the fp32
    log-probabilities cross-entropy keeps, and the two fp32 gradients of its backward; the bf16
    logits and their fp32 copies of the forward are gone by then), one layer recomputed (its saved
    tensors, the gradients of its widest ones, and for LoRA each projection's dropout copy of its
    input with the mask), and the 8-bit optimizer's step (fp32 buffers of its largest parameter).
  A merged stage (2c, 2f) then merges: the trainer (4-bit model, LoRA, optimizer state) still
    resident, the base's full weights (bf16) loaded beside it, and the merged model's validation
    loss measured at training.validation_loss's batch (10 B per logit: bf16 logits, the fp32 upcast
    and the log-probabilities, no gradients). Where it runs is models.merge_device's rule at run
    time: on the GPU when the bf16 weights and MERGE_MARGIN_GIB fit what the trainer left free
    (PyTorch's cache still holds the training peak), else on the CPU in bf16, checked on a few
    validation rows (a 7B model's 13.5 GiB never fit beside the trainer on a 12 GB card): then the
    merge is RAM (Need.merge), not the GPU's peak.
  + ~0.5 GiB of CUDA context per process (outside PyTorch's allocator).
"""
import dataclasses
import inspect
import json
from dataclasses import dataclass, field

from chateau import dial, stages

GIB = 2 ** 30

# TinyLlama_v1.1's config.json (the fields the estimates read): the shape when the base model is
# not downloaded yet.
TINYLLAMA_V1_1 = dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                      intermediate_size=5632, vocab_size=32000, tie_word_embeddings=False, max_position_embeddings=2048)

# Mistral-7B-v0.1's config.json (the fields the estimates read): the 7B base of downloads.BASES,
# planned before it is downloaded (14.5 GB).
MISTRAL_7B_V0_1 = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       intermediate_size=14336, vocab_size=32000, tie_word_embeddings=False,
                       max_position_embeddings=32768, sliding_window=4096, rms_norm_eps=1e-5, rope_theta=10000.0)
# The configs of the bases the project downloads (chateau/downloads.py's BASES, by hub repository),
# for a base named with --base-model before its folder holds a config.json.
KNOWN_CONFIGS = {"TinyLlama/TinyLlama_v1.1": TINYLLAMA_V1_1, "mistralai/Mistral-7B-v0.1": MISTRAL_7B_V0_1}

CUDA_CONTEXT_GIB = 0.5  # the CUDA context and cuBLAS workspace of one process, outside the allocator
CARD_GIB = 12.0  # the card the defaults are written for (a "12 GB" RTX 3060 / 4070: 12,288 MiB): the plan without a GPU

# (weights, gradients, optimizer state) in bytes per parameter for the full-weight optimizers
# (chateau/fullweight.py's OPTIMIZERS); the weights' dtype follows the optimizer there.
_8BIT_STATE = 2 * (1 + 4 / 256)  # two 8-bit moments + an fp32 scale per block of 256 (torchao; bitsandbytes alike)
FULL_WEIGHT_BYTES = {
    "adamw8bit_sr": {"cuda": (2, 2, _8BIT_STATE), "cpu": (4, 4, _8BIT_STATE)},  # bf16 on GPU, fp32 on CPU
    "paged_adamw_8bit": {"cuda": (4, 4, _8BIT_STATE), "cpu": (4, 4, _8BIT_STATE)},
    "adamw_torch": {"cuda": (4, 4, 8), "cpu": (4, 4, 8)},
}
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4 bits; an 8-bit absmax per 64 values, an fp32 scale per 256 absmaxes
LORA_BYTES = 4 + 4 + 8                      # fp32 factor + gradient + AdamW's two fp32 moments (the Trainer's adamw_torch)
LOSS_BYTES_PER_LOGIT = 12                   # training: fp32 log-probabilities + the two fp32 gradients of their backward
EVAL_BYTES_PER_LOGIT = 10                   # no gradients: bf16 logits + the fp32 upcast + the log-probabilities
MASK_BYTES = 1                              # LoRA dropout: a copy of its input (the residual's dtype) + this bool mask

# Disk, bytes per parameter: a checkpoint's optimizer state is the state above; GGUF files as
# step 4 writes them (f16; q8_0: 32 int8 + one f16 scale per block; llama.cpp's q4_k_m: ~4.85 bits).
GGUF_BYTES = {"f16": 2, "bf16": 2, "f32": 4, "q8_0": 34 / 32, "q4_k_m": 4.85 / 8, "q5_k_m": 5.7 / 8, "q6_k": 6.56 / 8}
# The novel's length in tokens before 1c has tokenized it (Le Château in French, Llama's tokenizer:
# ~200k; 2c's settings say so too): only 1c's few MB of windows depend on it.
NOVEL_TOKENS = 250_000


@dataclass(frozen=True)
class Shape:
    """A Llama- (or Mistral-) architecture model's dimensions."""
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool = False
    head_dim: int = 0
    source: str = "TinyLlama_v1.1's shape"

    @classmethod
    def from_config(cls, config, source="config.json"):
        heads = config["num_attention_heads"]
        return cls(hidden=config["hidden_size"], layers=config["num_hidden_layers"], heads=heads,
                   kv_heads=config.get("num_key_value_heads") or heads, intermediate=config["intermediate_size"],
                   vocab=config["vocab_size"], tied=bool(config.get("tie_word_embeddings", False)),
                   head_dim=config.get("head_dim") or config["hidden_size"] // heads, source=source)

    def matrices(self):
        """{projection: (in, out)} of one layer: what the 4-bit base quantizes and LoRA targets."""
        h, i, q, kv = self.hidden, self.intermediate, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def matrix_params(self):
        return self.layers * sum(a * b for a, b in self.matrices().values())

    @property
    def embedding_params(self):
        """The token embedding and the LM head (one matrix when tied)."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def norm_params(self):
        return (2 * self.layers + 1) * self.hidden

    @property
    def params(self):
        return self.matrix_params + self.embedding_params + self.norm_params

    def lora_params(self, r, targets):
        return self.layers * sum(r * (a + b) for name, (a, b) in self.matrices().items() if name in targets)

    def layer_activations(self, tokens, lora_targets=()):
        """Elements one decoder layer keeps for its backward per micro-step of `tokens` (B x T):
        its two norms' outputs and inputs, q/k/v, the attention output, and the MLP's gate, up,
        activation and product (SDPA's fused attention keeps no T x T matrix)."""
        kv = self.kv_heads * self.head_dim
        return tokens * (4 * self.hidden + 2 * kv + 4 * self.intermediate)

    def lora_inputs(self, targets):
        """Widths of the inputs LoRA's dropout copies in one layer (one copy per targeted projection)."""
        return sum(a for name, (a, b) in self.matrices().items() if name in targets)


TINYLLAMA_SHAPE = Shape.from_config(TINYLLAMA_V1_1, source="TinyLlama_v1.1's shape (no base model here yet)")


def model_shape(project, base_model=None):
    """The shape of base `base_model` (default: the project's default base) from its config.json
    (every later model of its chain shares it); before it is downloaded, a known base's (KNOWN_CONFIGS),
    else TinyLlama_v1.1's. `project`: the project folder or a base's workspace."""
    base_model = base_model or stages.BASE_MODEL
    base = stages.base_model_dir(project, base_model)
    try:
        return Shape.from_config(json.loads((base / "config.json").read_text()), source=str(base / "config.json"))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    from chateau import downloads
    known = downloads.base_of_folder(base_model)
    if known and known.repo in KNOWN_CONFIGS and known.repo != downloads.MODEL_REPO:
        return Shape.from_config(KNOWN_CONFIGS[known.repo], source=f"{known.repo}'s shape (not downloaded yet)")
    return TINYLLAMA_SHAPE


def stage_defaults(name):
    """{setting: default} of stage `name`'s numbered script (its Settings dataclass, groups as dicts)."""
    return dataclasses.asdict(stages.settings_class(name)())


def lora_targets():
    from chateau.qlora import LORA_TARGETS
    return LORA_TARGETS


def lora_rank(name, settings=None, project=None):
    """The rank of the LoRA QLoRA stage `name` trains: a new LoRA's --lora-r (`settings`, default
    its script's); a continued one's is the adapter's it continues (2f trains 2e's rank-16 adapter,
    whatever its own --lora-r says): that stage's adapter_config.json in `project` (a workspace)
    once it is trained, else its script's default."""
    source = stages.stage(name).adapter_from
    if not source:
        return (settings or stage_defaults(name))["lora_r"]
    if project is not None:
        try:
            return int(json.loads((stages.folder(project, source) / "adapter_config.json").read_text())["r"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return lora_rank(source, None, project)


def validation_batch():
    """The batch of training.validation_loss (the merge's check)."""
    from chateau import training
    return inspect.signature(training.validation_loss).parameters["batch_size"].default


# ---------------------------------------------------------------------------------------------
# Memory

def sample_tokens(project, name, settings=None):
    """Tokens per training sample of train stage `name`: its prepared data's seq_len (the prepare
    step's default until it has run), cut to --sample-tokens where the recipe cuts (2d)."""
    from chateau import prepared
    settings = settings or stage_defaults(name)
    data = stages.stage(name).data
    try:
        manifest = prepared.read_manifest(stages.folder(project, data))
    except ValueError:
        manifest = None
    seq_len = (manifest or {}).get("settings", {}).get("seq_len") or stage_defaults(data)["seq_len"]
    cut = settings.get("sample_tokens", 0)
    return cut if 0 < cut <= seq_len else seq_len


@dataclass
class Need:
    """A stage's estimated peak (GiB) with its parts, and how it was reckoned (`setup`)."""
    stage: str
    setup: str
    parts: dict = field(default_factory=dict)   # {what: GiB}, the peak is their sum
    overhead_gib: float = 0.0                   # CUDA context (GPU) or nothing (CPU)
    merge: "Need" = None                        # a merged stage trained on the GPU whose merge runs on the CPU: its RAM

    @property
    def gib(self):
        return sum(self.parts.values()) + self.overhead_gib


def train_memory(name, shape, tokens, settings=None, device="cuda", batch_size=None, free_gib=CARD_GIB, project=None):
    """The peak memory of train stage `name` on one GPU (`device` "cuda") or in RAM ("cpu") at
    `settings` (default: the script's defaults) with `tokens`-token samples, as a Need. A merged
    stage's merge counts where it runs: on a GPU with `free_gib` free before training (default: a
    12 GB card) when models.merge_device would keep it there, else on the CPU (Need.merge: RAM).
    `project`: the stages' workspace, where a continued adapter's rank is read (lora_rank)."""
    settings = settings or stage_defaults(name)
    step = stages.stage(name)
    batch = batch_size or settings["batch_size"]
    micro = batch * tokens  # tokens per micro-step
    checkpointing = settings.get("gradient_checkpointing", True)
    parts = {}
    if step.recipe == "fullweight":
        weight, grad, state = FULL_WEIGHT_BYTES[settings.get("optimizer", "adamw8bit_sr")][device]
        act = weight  # the residual stream has the weights' dtype
        parts["weights"] = shape.params * weight / GIB
        parts["gradients"] = shape.params * grad / GIB
        parts["optimizer state"] = shape.params * state / GIB
        # The 8-bit optimizer's step computes each parameter's update in fp32 (torchao's single_param_adam):
        # compiled on GPU, its fused kernels keep ~2 fp32 buffers of the largest parameter; eager (CPU)
        # ~6 (the weight, the gradient, both moments, the denominator, the new weight).
        largest = max(shape.vocab * shape.hidden, max(a * b for a, b in shape.matrices().values()))
        step_peak = largest * 4 * (2 if device == "cuda" else 6) / GIB
        layer = (shape.layer_activations(micro) + 2 * micro * shape.intermediate) * act
        recipe = "full weights"
    else:
        targets = lora_targets()
        rank = lora_rank(name, settings, project)
        act = _qlora_float_bytes(settings, device)  # the residual stream has the (upcast) norms' dtype
        lora = shape.lora_params(rank, targets)
        parts["4-bit weights"] = shape.matrix_params * NF4_BYTES / GIB
        parts[f"embeddings, head, norms ({'fp32' if act == 4 else 'bf16'})"] = \
            (shape.embedding_params + shape.norm_params) * act / GIB
        parts["LoRA + its AdamW"] = lora * LORA_BYTES / GIB
        step_peak = 0.0
        # Under autocast peft applies the dropout to the input as it comes: fp32, or bf16 with --upcast-norms false.
        dropout = shape.lora_inputs(targets) * micro * (act + MASK_BYTES) if settings.get("lora_dropout", 0) > 0 else 0
        dequantized = max(a * b for a, b in shape.matrices().values()) * 2  # one 4-bit matrix as bf16, in matmul
        # The recomputed layer's saved tensors and gradients at 4 B, whatever the residual's dtype: with a
        # bf16 residual its matmuls' outputs are bf16, but the norms' fp32 upcasts and autocast's bf16
        # copies of every projection's input come beside them. Measured at Mistral-7B's width
        # (python -m bench.qlora_memory --mistral): the bf16 layer ~90% of the fp32 one, not half.
        layer = (shape.layer_activations(micro) + 2 * micro * shape.intermediate) * 4 + dropout + dequantized
        recipe = f"4-bit base + LoRA r {rank}"
    loss = micro * shape.vocab * LOSS_BYTES_PER_LOGIT
    if checkpointing:
        parts["checkpointed layer inputs"] = shape.layers * micro * shape.hidden * act / GIB
        activations = max(loss, layer)  # the loss's backward, then one layer at a time: never together
    else:
        activations = shape.layers * layer + loss  # every layer's activations are alive at the loss
    parts["peak of a step (the loss's backward, a recomputed layer or the optimizer step)"] = max(activations / GIB, step_peak)
    need = Need(name, f"{recipe}, batch {batch} x {tokens} tokens", parts,
                CUDA_CONTEXT_GIB if device == "cuda" else 0.0)
    if step.produces == stages.MERGED and settings.get("merge", True):
        if merge_device(shape, need, device, free_gib) == "cpu" and device == "cuda":
            need.merge = cpu_merge_memory(name, shape, tokens)
            need.setup += f"; its merge on the CPU (~{need.merge.gib:.1f} GiB of RAM)"
            return need
        merge = merge_memory(name, shape, settings, tokens, device, project)
        if merge.gib > need.gib:
            merge.setup = f"{need.setup}; its merge is the peak"
            return merge
    return need


def merge_device(shape, training, device="cuda", free_gib=CARD_GIB):
    """Where a merged stage's merge runs, by models.merge_device's rule (merge_need_gib): the GPU
    memory free then is taken as `free_gib` less the `training` Need's peak (a bound: the trainer's
    model and optimizer state are still held, its activations already freed); a CPU run merges on
    the CPU."""
    from chateau.models import merge_need_gib
    if device != "cuda":
        return "cpu"
    return "cuda" if merge_need_gib(shape.params) <= free_gib - training.gib else "cpu"


def _qlora_float_bytes(settings, device):
    """Bytes of the QLoRA model's unquantized weights and residual stream: fp32 with --upcast-norms
    (the default: peft's prepare_model_for_kbit_training), else the compute dtype (bf16 on GPU)."""
    return 4 if settings.get("upcast_norms", True) or device == "cpu" else 2


def merge_memory(name, shape, settings, tokens, device="cuda", project=None):
    """A merged stage's merge on the device it trained on (chateau/qlora.py's merge): the trainer
    still resident (4-bit model, LoRA and its AdamW), the base's full weights loaded beside it, and
    the merged model's validation loss at training.validation_loss's batch."""
    targets = lora_targets()
    eval_batch = validation_batch()
    full = 2 if device == "cuda" else 4  # models.load_model: bf16 on GPU, fp32 on CPU
    rank = lora_rank(name, settings, project)
    parts = {"trainer (4-bit model, LoRA, AdamW)": (shape.matrix_params * NF4_BYTES
                                                    + (shape.embedding_params + shape.norm_params)
                                                    * _qlora_float_bytes(settings, device)
                                                    + shape.lora_params(rank, targets) * (LORA_BYTES - 4)) / GIB,
             "the base's full weights": shape.params * full / GIB,
             f"validation logits (batch {eval_batch})": eval_batch * tokens * shape.vocab * EVAL_BYTES_PER_LOGIT / GIB}
    return Need(name, "its merge", parts, CUDA_CONTEXT_GIB if device == "cuda" else 0.0)


def cpu_merge_memory(name, shape, tokens):
    """RAM of a GPU run's merge moved to the CPU (models.merge_device): the base's weights in bf16
    (the process's compute dtype), the merge's margin (the adapter, peft's copies of one layer,
    the allocator: models.MERGE_MARGIN_GIB) and its check, the validation loss of a few rows
    (qlora.CPU_MERGE_CHECK_ROWS) at training.validation_loss's batch. The trainer stays on the GPU."""
    from chateau.models import MERGE_MARGIN_GIB
    from chateau.qlora import CPU_MERGE_CHECK_ROWS
    eval_batch = validation_batch()
    parts = {"the base's weights (bf16)": shape.params * 2 / GIB,
             "the merge's margin (adapter, peft's copies, allocator)": MERGE_MARGIN_GIB,
             f"its check's logits ({CPU_MERGE_CHECK_ROWS} rows, batch {eval_batch})":
                 eval_batch * tokens * shape.vocab * EVAL_BYTES_PER_LOGIT / GIB}
    return Need(name, f"its merge on the CPU (bf16; checked on {CPU_MERGE_CHECK_ROWS} validation rows)", parts)


def largest_batch(name, shape, tokens, free_gib, settings=None, device="cuda", project=None):
    """The largest --batch-size below the default that fits `free_gib` and divides the tokens per
    step (the accumulation is derived from it: training.accumulation), with its Need; or None."""
    settings = settings or stage_defaults(name)
    for batch in range(settings["batch_size"] - 1, 0, -1):
        if settings["tokens_per_step"] % (batch * tokens):
            continue
        need = train_memory(name, shape, tokens, settings, device, batch_size=batch, free_gib=free_gib, project=project)
        if need.gib <= free_gib:
            return batch, need
    return None


def fits(name, shape, tokens, free_gib, settings=None, device="cuda", project=None):
    """Whether train stage `name` fits `free_gib` at its defaults or at a smaller --batch-size."""
    settings = settings or stage_defaults(name)
    need = train_memory(name, shape, tokens, settings, device, free_gib=free_gib, project=project)
    return need.gib <= free_gib or largest_batch(name, shape, tokens, free_gib, settings, device, project) is not None


# ---------------------------------------------------------------------------------------------
# Disk

@dataclass
class Disk:
    """What a stage leaves on disk (`kept_gib`) and its most at any moment while writing (`peak_gib`)."""
    stage: str
    kept_gib: float
    peak_gib: float
    what: str


def stage_disk(name, shape, project=None, device="cuda"):
    """The disk stage `name` writes at its defaults."""
    step = stages.stage(name)
    settings = stage_defaults(name)
    if step.kind == "prepare":
        if "n_samples" in settings:
            rows, seq_len = settings["n_samples"] + settings["validation_samples"], settings["seq_len"]
            what = f"{rows:,} samples of {seq_len} tokens"
        else:  # the novel: windows every `stride` tokens
            rows, seq_len = NOVEL_TOKENS // settings["stride"], settings["seq_len"]
            what = f"~{rows} windows of {seq_len} tokens"
        data = rows * seq_len * 4 / GIB  # int32 ids
        # The writer streams Arrow files into its staging folder, then saves the final shards beside them.
        return Disk(name, data, 2 * data, f"{what} as int32 ids")
    if step.kind == "train":
        keep = settings["save_total_limit"]
        if step.recipe == "fullweight":
            weight, _, state = FULL_WEIGHT_BYTES[settings.get("optimizer", "adamw8bit_sr")][device]
            model = shape.params * weight / GIB
            checkpoint = model + shape.params * state / GIB
            what = f"the model ({'bf16' if weight == 2 else 'fp32'}) and {keep} checkpoints with the optimizer state"
        else:
            lora = shape.lora_params(lora_rank(name, settings, project), lora_targets())
            model = lora * 4 / GIB
            checkpoint = model + lora * 8 / GIB  # + AdamW's two fp32 moments
            what = f"the adapter and {keep} checkpoints"
            if step.produces == stages.MERGED and settings.get("merge", True):
                model += shape.params * (2 if device == "cuda" else 4) / GIB
                what += " and the merged model"
        passes = 0.0
        if dial.is_dialled(name):  # every pass kept (chateau/dial.py): its weights or its adapter
            passes = settings["epochs"] * (shape.params * 2 / GIB if step.recipe == "fullweight" else
                                           shape.lora_params(lora_rank(name, settings, project), lora_targets()) * 4 / GIB)
            what += f" and its {settings['epochs']} passes"
        # The Trainer writes a new checkpoint before it deletes the oldest one.
        return Disk(name, model + keep * checkpoint + passes,
                    max((keep + 1) * checkpoint, keep * checkpoint + model) + passes, what)
    if step.kind == "export":
        kinds = settings["types"].split(",")
        size = sum(GGUF_BYTES.get(k, 2) for k in kinds) * shape.params / GIB
        return Disk(name, size, size, f"GGUF files {', '.join(kinds)}")
    return Disk(name, 0.0, 0.0, "a chapter of text")


# ---------------------------------------------------------------------------------------------
# RAM on the CPU side of a GPU run

def ram_need(shape, verify=True):
    """RAM the default path needs beside the GPU: step 4's export holds the model as saved (bf16)
    and the file's f16 tensors while it writes it, and its checks (--verify, the default) the source model and the file read back
    by transformers, both fp32, beside llama.cpp's f16 copy (chateau/gguf_files.py). The other
    steps load models straight onto the GPU, and the prepare steps stay near 1.3 GiB
    (docs/performance.md)."""
    if verify:
        return Need("4", "step 4 (two fp32 copies of the model and llama.cpp's f16 file)",
                    {"the export's checks": shape.params * (4 + 4 + 2) / GIB})
    return Need("4", "step 4 with --verify false (the bf16 model and the file's f16 tensors)", {"the export": shape.params * 4 / GIB})
