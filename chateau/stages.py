"""The curriculum's stage table: the one place that says which stages exist, which script makes
each, where its output lives under the project folder, what it reads, what it produces (prepared
data, a full model, an adapter on a base, a merged model, text, an export), the model it starts
from and its recipe. Every module, test, benchmark and the notebook ask this table; nothing else
spells a stage's folder or script, or compares a stage's name to decide what to load, merge,
export, score or benchmark. Adding a stage is one row here and a settings-only script."""
import json
import os
from dataclasses import dataclass
from pathlib import Path

from chateau.cli import StageError, project_dir

# The inputs, under the project folder (mounted at /project in the container).
BASE_MODEL = "models/TinyLlama_v1.1"     # the downloaded base model + tokenizer
GALLICA_DIR = "datasets/French-PD-Books"  # Gallica parquet files, any depth
NOVEL_PDF = "Kafka-Le-Chateau.pdf"        # the novel

# What a stage produces.
PREPARED = "prepared data"   # a DatasetDict of fixed-length samples (prepared.py's format)
FULL_MODEL = "full model"    # a model folder (safetensors + tokenizer)
ADAPTER = "adapter"          # a LoRA adapter on `base`'s full model (peft format)
MERGED = "merged model"      # an adapter on `base`, plus merged/: the adapter merged into base's weights
TEXT = "text"                # a continuation of the novel (output/)
EXPORT = "export"            # GGUF files of a model stage (<stage folder>/gguf/)
MODEL_KINDS = (FULL_MODEL, ADAPTER, MERGED)


@dataclass(frozen=True)
class Stage:
    name: str            # "1a" ... "4": also the prefix of its script
    script: str          # the numbered script that makes it
    output: str          # its output folder, relative to the project folder
    produces: str        # one of the kinds above
    reads: tuple = ()    # prepare/write/export stages: what they are made from ("base", "gallica", "novel", stages)
    base: str = None     # train stages: the model they start from ("base" = the downloaded model); an adapter sits on it
    recipe: str = None   # train stages: "fullweight" (chateau/fullweight.py) or "qlora" (chateau/qlora.py)
    data: str = None     # train stages: the prepare stage trained on (its validation set is the primary one)
    eval_also: tuple = ()  # train stages: prepare stages whose validation loss is also reported (forgetting)
    adapter_from: str = None  # QLoRA stages: the train stage whose adapter is continued (None: a new LoRA)
    title: str = ""      # what people call it (plots, summaries): its data or its model

    @property
    def kind(self):
        """"prepare", "train", "write" or "export": how the stage is run and marked finished."""
        return {PREPARED: "prepare", TEXT: "write", EXPORT: "export"}.get(self.produces, "train")

    @property
    def inputs(self):
        """Everything the stage is made from: what its lineage records and checks."""
        if self.kind != "train":
            return self.reads
        return tuple(dict.fromkeys([self.base, self.data, *self.eval_also, *([self.adapter_from] if self.adapter_from else [])]))

    @property
    def run_name(self):
        """Its folder name, also its TensorBoard run under runs/ (e.g. "2a_gallica_fullweight")."""
        return Path(self.output).name

    def folder(self, project):
        return Path(project) / self.output

    def hint(self):
        return f"run `python {self.script}` first"


TABLE = (
    Stage("1a", "1a_prepare_gallica_fullweight.py", "data/1a_gallica_fullweight", PREPARED, reads=("base", "gallica"),
          title="French books, 512 tokens"),
    Stage("1b", "1b_prepare_gallica_QLoRA.py", "data/1b_gallica_qlora", PREPARED, reads=("base", "gallica"),
          title="French books, 2,048 tokens"),
    Stage("1c", "1c_prepare_kafka.py", "data/1c_kafka", PREPARED, reads=("base", "novel"), title="the novel"),
    Stage("2a", "2a_train_gallica_fullweight.py", "models/2a_gallica_fullweight", FULL_MODEL,
          base="base", recipe="fullweight", data="1a", title="French, full weights"),
    Stage("2b", "2b_train_gallica_QLoRA.py", "models/2b_gallica_qlora", ADAPTER,
          base="2a", recipe="qlora", data="1b", eval_also=("1a",), title="French, QLoRA"),
    Stage("2c", "2c_train_kafka_QLoRA.py", "models/2c_kafka_qlora", MERGED,
          base="2a", recipe="qlora", data="1c", eval_also=("1b",), adapter_from="2b", title="the novel, QLoRA (merged)"),
    Stage("2d", "2d_train_kafka_fullweight.py", "models/2d_kafka_fullweight", FULL_MODEL,
          base="2a", recipe="fullweight", data="1c", eval_also=("1a",), title="the novel, full weights"),
    # The path of a base whose full weights do not fit a 12 GB card (a 7B model): QLoRA on the 4-bit
    # base itself (no 2a), then that adapter continued on the novel.
    Stage("2e", "2e_train_gallica_QLoRA_on_base.py", "models/2e_gallica_qlora_on_base", ADAPTER,
          base="base", recipe="qlora", data="1a", title="French, QLoRA on the 4-bit base"),
    Stage("2f", "2f_train_kafka_QLoRA_on_base.py", "models/2f_kafka_qlora_on_base", MERGED,
          base="base", recipe="qlora", data="1c", eval_also=("1a",), adapter_from="2e",
          title="the novel, QLoRA on 2e (merged)"),
    Stage("3", "3_continue_kafka.py", "output", TEXT, reads=("2c", "1c"), title="the continuation"),
    Stage("4", "4_export_gguf.py", "models/2c_kafka_qlora/gguf", EXPORT, reads=("2c",), title="GGUF export"),
)
STAGES = {stage.name: stage for stage in TABLE}
PREPARE_STAGES = tuple(s.name for s in TABLE if s.kind == "prepare")  # ("1a", "1b", "1c")
TRAIN_STAGES = tuple(s.name for s in TABLE if s.kind == "train")      # ("2a", "2b", "2c", ...)
MODEL_STAGES = ("base",) + TRAIN_STAGES  # the models the notebook and the scoreboard compare
EXPORTABLE = tuple(s.name for s in TABLE if s.produces in (FULL_MODEL, MERGED))  # full weights to write as GGUF

# The roles of the data, for the steps that measure or prompt with it.
NOVEL_DATA = "1c"           # the novel's windows; its validation split is the held-out slice
FRENCH_DATA = ("1b", "1a")  # held-out French books, in order of preference
CURRICULUM_END = "2c"       # the model steps 3 and 4 use unless told otherwise


BASE_MODEL_HELP = ("the base model of the whole chain: its folder, relative to the project folder or absolute; a "
                   "Llama- or Mistral-architecture model (a GGUF file converts with `python -m chateau.gguf_files "
                   "FILE.gguf OUT_DIR`). The same value on every step: each base's stages live in a folder of their "
                   "own (see stages.workspace)")
BASES_DIR = "bases"        # the stages of every base but the default, one folder each
WORKSPACE_RECORD = "base.json"  # in such a folder: the base model it belongs to


def same_model(project, a, b):
    """Whether two --base-model values name the same folder (each relative to `project` or absolute)."""
    return (Path(project) / a).resolve() == (Path(project) / b).resolve()


def workspace(project, base_model=BASE_MODEL):
    """The folder the stages of `base_model` live in: the project folder itself for the default
    base (TinyLlama: the folders above, as they always were), bases/<its folder's name>/ inside
    it for any other. Each base prepares its own data (its tokenizer) and trains its own chain,
    so running a second base never makes the first one's stages stale or touches them. The
    inputs (the Gallica books, the PDF, the base models) stay the project's: inputs_dir."""
    project = Path(project)
    return project if same_model(project, base_model, BASE_MODEL) else project / BASES_DIR / Path(base_model).name


def inputs_dir(folder):
    """The project folder whose inputs a workspace reads (the inverse of workspace())."""
    folder = Path(folder)
    return folder.parent.parent if folder.parent.name == BASES_DIR else folder


def workspaces(project):
    """{base model: its workspace} for every base with stages in the project, the default first
    (the notebook and the scoreboard show them side by side)."""
    project = Path(project)
    found = {BASE_MODEL: project}
    for record in sorted((project / BASES_DIR).glob(f"*/{WORKSPACE_RECORD}")):
        found[json.loads(record.read_text())["base_model"]] = record.parent
    return found


def claim_workspace(project, base_model):
    """The workspace of `base_model`, created and recorded as that base's. Two bases whose folders
    share a name (models/X and /elsewhere/X) would share one: refused, in one line."""
    folder = workspace(project, base_model)
    if folder == Path(project):
        return folder
    record = folder / WORKSPACE_RECORD
    if record.exists():
        owner = json.loads(record.read_text())["base_model"]
        if not same_model(project, owner, base_model):
            raise StageError(f"{folder} holds the stages of base {owner}, not of {base_model}: give this base's folder "
                             f"another name (each base's stages live in bases/<its folder's name>/)")
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    tmp = record.with_name(f".{record.name}.{os.getpid()}.partial")  # written whole, then renamed: never half a record
    tmp.write_text(json.dumps({"base_model": base_model}) + "\n")
    tmp.replace(record)
    return folder


def base_of(folder):
    """The base model a workspace belongs to (the default base's is the project folder itself)."""
    record = Path(folder) / WORKSPACE_RECORD
    return json.loads(record.read_text())["base_model"] if Path(folder).parent.name == BASES_DIR and record.exists() \
        else BASE_MODEL


def workspace_of(settings, claim=False):
    """A step's workspace from its --project-dir and --base-model; `claim`: the steps that write
    stages create and record it (claim_workspace), the ones that only read never do."""
    project = project_dir(settings.project_dir)
    return claim_workspace(project, settings.base_model) if claim else workspace(project, settings.base_model)


def base_model_dir(project, value=BASE_MODEL):
    """The base model's folder: `value` relative to the project folder (of a workspace: the
    project's), or absolute."""
    return inputs_dir(project) / value


def stage(name):
    return STAGES[name]


def folder(project, name):
    """The output folder of stage `name` in `project`."""
    return STAGES[name].folder(project)


def script_of(name):
    return STAGES[name].script


def command(name, base_model=BASE_MODEL, *flags):
    """The command that runs stage `name` for `base_model` ("python 2e_....py --base-model X"):
    what a step's "Next:" line names, the base's flag included when it is not the default."""
    base = [] if Path(base_model) == Path(BASE_MODEL) else ["--base-model", base_model]
    return " ".join(["python", STAGES[name].script, *base, *map(str, flags)])


ROOT = Path(__file__).resolve().parents[1]  # the numbered scripts' folder (the container's /app)
_modules = {}


def script_module(script):
    """A numbered script imported as a module (its name starts with a digit: not importable by name)."""
    import importlib.util
    if script not in _modules:
        spec = importlib.util.spec_from_file_location(f"step_{Path(script).stem}", ROOT / script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _modules[script] = module
    return _modules[script]


def settings_class(name):
    """The Settings dataclass of stage `name`'s script: its defaults are the stage's defaults."""
    return script_module(STAGES[name].script).Settings


def stage_of_script(script):
    """The stage a numbered script makes ("2a_train_gallica_fullweight.py" -> "2a")."""
    return next(s.name for s in TABLE if s.script == Path(script).name)


def model_dir(project, name, base_model=None):
    """The folder of full weights that stage `name`'s model is (or, for an adapter, sits on):
    "base" -> the base model (`base_model`, default: the workspace's own, base_of); a full model -> its folder; a merged stage -> its merged/; an
    adapter -> its base's full model (the adapter itself is in `folder(project, name)`)."""
    if name == "base":
        return base_model_dir(project, base_model or base_of(project))
    step = STAGES[name]
    if step.produces == ADAPTER:
        return model_dir(project, step.base, base_model)
    return step.folder(project) / "merged" if step.produces == MERGED else step.folder(project)


def is_adapter(name):
    return name != "base" and STAGES[name].produces == ADAPTER


def export_dir(project, name):
    """Where step 4 writes the GGUF files of stage `name`."""
    return folder(project, name) / "gguf"


def path_to(name):
    """The train stages that lead to stage `name`, in training order ("2c" -> ("2a", "2b", "2c")):
    each stage follows the one whose adapter it continues, else the one it starts from."""
    chain = []
    while name and name != "base":
        chain.insert(0, name)
        name = STAGES[name].adapter_from or STAGES[name].base
    return tuple(chain)


def label(name):
    """"2c: the novel, QLoRA (merged)"; "base" for the base model."""
    return "base model" if name == "base" else f"{name}: {STAGES[name].title}"


def model_stages_of(kinds):
    return tuple(s.name for s in TABLE if s.produces in kinds)
