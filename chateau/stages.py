"""The curriculum's stage table: the one place that says which stages exist, which script makes
each, where its output lives under the project folder and what it reads. Every module, test,
benchmark and the notebook ask this table; nothing else spells a stage's folder or script."""
from dataclasses import dataclass
from pathlib import Path

# The inputs, under the project folder (mounted at /project in the container).
BASE_MODEL = "models/TinyLlama_v1.1"     # the downloaded base model + tokenizer
GALLICA_DIR = "datasets/French-PD-Books"  # Gallica parquet files, any depth
NOVEL_PDF = "Kafka-Le-Chateau.pdf"        # the novel


@dataclass(frozen=True)
class Stage:
    name: str            # "1a" ... "3": also the prefix of its script
    script: str          # the numbered script that makes it
    output: str          # its output folder, relative to the project folder
    reads: tuple         # the stages (or "base", "gallica", "novel") it is made from
    kind: str            # "prepare" (a DatasetDict), "train" (a model or adapter), "write" (text), "export" (GGUF)

    @property
    def run_name(self):
        """Its folder name, also its TensorBoard run under runs/ (e.g. "2a_gallica_fullweight")."""
        return Path(self.output).name

    def folder(self, project):
        return Path(project) / self.output

    def hint(self):
        return f"run `python {self.script}` first"


TABLE = (
    Stage("1a", "1a_prepare_gallica_fullweight.py", "data/1a_gallica_fullweight", ("base", "gallica"), "prepare"),
    Stage("1b", "1b_prepare_gallica_QLoRA.py", "data/1b_gallica_qlora", ("base", "gallica"), "prepare"),
    Stage("1c", "1c_prepare_kafka.py", "data/1c_kafka", ("base", "novel"), "prepare"),
    Stage("2a", "2a_train_gallica_fullweight.py", "models/2a_gallica_fullweight", ("base", "1a"), "train"),
    Stage("2b", "2b_train_gallica_QLoRA.py", "models/2b_gallica_qlora", ("2a", "1b", "1a"), "train"),
    Stage("2c", "2c_train_kafka_QLoRA.py", "models/2c_kafka_qlora", ("2a", "2b", "1c", "1b"), "train"),
    Stage("3", "3_continue_kafka.py", "output", ("2c", "1c"), "write"),
    Stage("4", "4_export_gguf.py", "models/2c_kafka_qlora/gguf", ("2c",), "export"),
)
STAGES = {stage.name: stage for stage in TABLE}
PREPARE_STAGES = tuple(s.name for s in TABLE if s.kind == "prepare")  # ("1a", "1b", "1c")
TRAIN_STAGES = tuple(s.name for s in TABLE if s.kind == "train")      # ("2a", "2b", "2c")
MODEL_STAGES = ("base",) + TRAIN_STAGES  # the models the notebook and the scoreboard compare


BASE_MODEL_HELP = ("base model folder, relative to the project folder or absolute: any Llama-architecture model "
                   "(a GGUF file converts with `python -m chateau.gguf_files FILE.gguf OUT_DIR`)")


def base_model_dir(project, value=BASE_MODEL):
    """The base model's folder: `value` relative to the project folder, or absolute."""
    return Path(project) / value


def stage(name):
    return STAGES[name]


def folder(project, name):
    """The output folder of stage `name` in `project`."""
    return STAGES[name].folder(project)


def script_of(name):
    return STAGES[name].script


def stage_of_script(script):
    """The stage a numbered script makes ("2a_train_gallica_fullweight.py" -> "2a")."""
    return next(s.name for s in TABLE if s.script == Path(script).name)
