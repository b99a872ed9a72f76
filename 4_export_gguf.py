"""Step 4: export a trained model to GGUF, to read the continuation on a laptop with llama.cpp,
Ollama or LM Studio.

    docker exec -it kafka python 4_export_gguf.py
    python 4_export_gguf.py --project-dir /tmp/kafka-demo            # tiny, CPU (after the demo)

Reads a finished stage's full model (default 2c's merged/: 2a's weights with the Kafka adapter
merged in at full precision, never into 4-bit weights) and writes models/<stage>/gguf/:
  <name>-f16.gguf    every matrix in float16 (TinyLlama: ~2.2 GB)
  <name>-q8_0.gguf   every matrix in 8-bit blocks (~1.2 GB), practically lossless
  <name>-q4_k_m.gguf from the f16 file by llama.cpp's own quantizer (~0.7 GB; the laptop size)
  Modelfile          for `ollama create`: a plain completion model, the project's sampling settings
  README.md          the model card: hub front matter, lineage, the dial's pass and its memorization, limits
  export.json        what each file was made from, its size, and its figures in llama.cpp and transformers
Each file is written under a temporary name, checked, and only then renamed to its own name: read
by llama.cpp itself (the engine of llama.cpp, Ollama and LM Studio; in a subprocess, so that an
abort is that file's failure) with no tokenizer warning, the same token ids as the transformers
tokenizer on the novel's held-out text and a line of French typography, the same BOS/EOS and
"add BOS", and next-token top-1 agreement and perplexity against the source model on the novel's
held-out windows within chateau/llama_cpp_check.py's THRESHOLDS; f16 and q8_0 are also read back
by transformers. A file that fails is not published, and the line says what failed.
"""
import json
import shutil
from dataclasses import dataclass

from chateau import dial, generation, gguf_files, lineage, llama_cpp_check, model_card, models, stages
from chateau.cli import StageError, is_disk_full, parse_settings, run, say, setting, write_atomic


@dataclass
class Settings:
    project_dir: str = setting("", "project folder (default: $KAFKA_PROJECT_DIR or /project)")
    base_model: str = setting(stages.BASE_MODEL, stages.BASE_MODEL_HELP)
    stage: str = setting(stages.CURRICULUM_END, f"finished stage to export: {', '.join(stages.EXPORTABLE)} (a merged stage: its merged/ model)")
    types: str = setting("f16,q8_0,q4_k_m", f"comma-separated GGUF types: {', '.join(gguf_files.EXPORT_TYPES)} "
                                             f"(written here), {', '.join(llama_cpp_check.LLAMA_TYPES)} (llama.cpp's quantizer)")
    name: str = setting("kafka-chateau", "file name stem: <name>-<type>.gguf, and the Ollama model's name")
    context: int = setting(2048, "context length written in the Modelfile (num_ctx)")
    verify: bool = setting(True, "check each file in llama.cpp and transformers against the source model before publishing it")
    overwrite: bool = setting(False, "export again although the files were made from this model already")
    allow_stale: bool = setting(False, "export a stage whose inputs changed since it was trained (recorded in export.json)")
    epoch: int = setting(0, "a full-weight stage trained in passes (2d): export this pass, into gguf/pass-N/ (0: the published one)")

    def problems(self):
        out = []
        if self.epoch < 0 or (self.epoch and not dial.is_dialled(self.stage)):
            out.append(f"--epoch {self.epoch}: only a stage trained in passes has them; 0 is the published one")
        if self.stage not in stages.EXPORTABLE:
            out.append(f"--stage must be one of {', '.join(stages.EXPORTABLE)}: stages with full weights (got {self.stage})")
        known = (*gguf_files.EXPORT_TYPES, *llama_cpp_check.LLAMA_TYPES)
        unknown = [t for t in self.types.split(",") if t not in known]
        if unknown or not self.types:
            out.append(f"--types takes {', '.join(known)} (got {self.types!r})")
        if not self.name or "/" in self.name:
            out.append(f"--name must be a plain file name stem (got {self.name!r})")
        if self.context <= 0:
            out.append(f"--context must be > 0 (got {self.context})")
        return out


def modelfile(gguf_name, settings, context_length):
    """Ollama's recipe: the file, no chat template (a completion model), the project's sampling,
    a context no longer than the file's (a sliding window caps it: gguf_files.gguf_context)."""
    sampling = generation.Sampling()
    return (f"# ollama create {settings.name} -f Modelfile && ollama run {settings.name} \"{generation.SEED_PROMPT}\"\n"
            f"FROM ./{gguf_name}\n"
            f'TEMPLATE """{{{{ .Prompt }}}}"""\n'
            f"PARAMETER temperature {sampling.temperature}\n"
            f"PARAMETER top_p {sampling.top_p}\n"
            f"PARAMETER repeat_penalty {sampling.repetition_penalty}\n"
            f"PARAMETER num_ctx {min(settings.context, context_length)}\n")


def weights_gib(model_dir):
    return sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) / 2**30


def main(argv=None):
    settings = parse_settings(Settings, argv, description=__doc__)
    project = stages.workspace_of(settings)  # the stages of --base-model
    source = stages.model_dir(project, settings.stage)
    if not lineage.is_finished(project, settings.stage) or not (source / "config.json").exists():
        raise StageError(f"step {settings.stage}'s model is missing or unfinished at {source}: "
                         f"{stages.stage(settings.stage).hint()}")
    stale = lineage.check_current(project, settings.stage, settings.allow_stale)
    out_dir = stages.export_dir(project, settings.stage)
    if settings.epoch:  # another pass than the published one: its own folder, never the published export's
        if stages.stage(settings.stage).produces != stages.FULL_MODEL:
            raise StageError(f"--epoch: {settings.stage}'s passes are adapters; merge one first by publishing it: "
                             f"`python -m chateau.dial --stage {settings.stage} --pass-number {settings.epoch}`")
        source, out_dir = dial.pass_dir(project, settings.stage, settings.epoch), out_dir / f"pass-{settings.epoch}"
        models.require(source / "config.json", f"pass {settings.epoch} of {settings.stage}",
                       f"`python -m chateau.dial --stage {settings.stage}` lists its passes")
    which = dial.which_pass(project, settings.stage, settings.epoch)
    if which:
        say(f"4: exporting {settings.stage}, {which}")
    record_path = out_dir / "export.json"
    model_digest = lineage.model_digest(source)
    context = gguf_files.gguf_context(source)  # a sliding window shorter than the positions caps it
    if gguf_files.sliding_window_line(context):
        say(gguf_files.sliding_window_line(context))

    with lineage.StageLock(out_dir, "4"):
        record = json.loads(record_path.read_text()) if record_path.exists() else {}
        out_dir.mkdir(parents=True, exist_ok=True)
        for left in [*out_dir.glob(".*.partial"), *out_dir.glob(".*.for-quantizing.gguf"), *out_dir.glob(".*.json")]:
            say(f"4: removing {left.name}: left by an export that was interrupted")  # we hold the lock: not a running one's
            left.unlink()
        checks = None  # the references for the checks, loaded when a first file needs them
        identity_of = lambda kind: {"source": model_digest, "stage": settings.stage, "type": kind}

        def recorded(path):
            """The identity export.json records for `path`, when the file there is the whole one it recorded."""
            done = record.get(path.name, {})
            return done.get("identity") if path.exists() and done.get("bytes") == path.stat().st_size else None

        for kind in settings.types.split(","):
            path = out_dir / f"{settings.name}-{kind}.gguf"
            # The one "already done" rule (chateau/lineage.py): a file whose record matches it and
            # this model is done; one from another model needs --overwrite; a half-written one is not a file.
            identity = identity_of(kind)
            if lineage.already_done(recorded(path), identity, settings.overwrite, str(path)):
                say(f"already exported: {path} (pass --overwrite to write it again)")
                continue
            if kind in llama_cpp_check.LLAMA_TYPES and not llama_cpp_check.available():
                say(f"4: {path.name} not written: {kind} is made by llama.cpp's own quantizer; {llama_cpp_check.INSTALL_HINT}")
                continue

            # Written under a staging name, checked, and only then published under its own name.
            staging = path.with_name(f".{path.name}.partial")
            staging.unlink(missing_ok=True)  # an interrupted run's
            say(f"4: writing {path} ...")
            done = {"identity": identity, "stage": settings.stage, "stale": stale, "context": context}
            temporary = out_dir / f".{settings.name}-f16.for-quantizing.gguf"
            try:
                if kind in gguf_files.EXPORT_TYPES:
                    gguf_files.export_gguf(source, staging, kind, settings.name)
                else:
                    f16 = out_dir / f"{settings.name}-f16.gguf"
                    published = f16 if recorded(f16) == identity_of("f16") else None
                    with gguf_files.f16_for_quantizing(source, published, temporary, settings.name) as f16:
                        done["tensor_types"] = llama_cpp_check.quantize(f16, staging, kind)
            except Exception as error:  # noqa: BLE001 - re-raised unless the disk is full
                if not is_disk_full(error):
                    raise
                for partial in (staging, temporary):  # never left holding the space the user needs
                    partial.unlink(missing_ok=True)
                raise StageError(f"disk full: {path.name} could not be written in {out_dir} "
                                 f"({shutil.disk_usage(out_dir).free / 2**30:.2f} GiB free there; the model's weights are "
                                 f"{weights_gib(source):.2f} GiB): nothing was published and the partial file was removed; "
                                 f"free some disk space, then rerun the same command") from None
            if kind not in gguf_files.EXPORT_TYPES:
                types = ", ".join(f"{count} {kind_}" for kind_, count in done["tensor_types"].items())
                say(f"4: {path.name}: llama.cpp's quantizer wrote its matrices as {types} "
                    f"(a matrix too narrow for a K-quant falls back to another type)")
            if settings.verify:
                checks = checks or gguf_files.Checks(source, project)
                try:
                    done.update(checks.run(staging, kind))
                except StageError as failed:
                    staging.unlink(missing_ok=True)
                    raise StageError(f"{path.name} is not published: {failed.message}") from None
            done["bytes"] = staging.stat().st_size
            staging.rename(path)
            record[path.name] = done
            write_atomic(record_path, json.dumps(record, indent=2) + "\n")

        exported = [out_dir / f"{settings.name}-{k}.gguf" for k in ("q8_0", "q4_k_m", "f16")]
        best = next((p for p in exported if p.exists()), None)
        if best is None:
            raise StageError(f"no GGUF file in {out_dir} to write a Modelfile for: export f16 or q8_0 (--types)")
        (out_dir / "Modelfile").write_text(modelfile(best.name, settings, context["context_length"]))
        # What is published says what it is: the model card, from the project's own records.
        files = [(p.name, round(p.stat().st_size / 2**20, 1)) for p in exported if p.exists()]
        write_atomic(out_dir / "README.md", model_card.card(project, settings.stage, settings.name, files, epoch=settings.epoch))
    files = ", ".join(f"{p.name} ({p.stat().st_size / 2**20:.1f} MiB)" for p in sorted(out_dir.glob("*.gguf")))
    say(f"4 done: {files} and a Modelfile in {out_dir}. Next: llama.cpp `llama-cli -m {best} -p \"...\"`, "
        f"or `cd {out_dir} && ollama create {settings.name} -f Modelfile`")


if __name__ == "__main__":
    run(main)
