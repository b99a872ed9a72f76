"""Step 4: export a trained model to GGUF, to read the continuation on a laptop with llama.cpp,
Ollama or LM Studio.

    docker exec -it kafka python 4_export_gguf.py
    python 4_export_gguf.py --project-dir /tmp/kafka-demo            # tiny, CPU (after the demo)

Reads a finished stage's full model (default 2c's merged/: 2a's weights with the Kafka adapter
merged in at full precision, never into 4-bit weights) and writes models/<stage>/gguf/:
  <name>-f16.gguf    every matrix in float16 (TinyLlama: ~2.2 GB)
  <name>-q8_0.gguf   every matrix in 8-bit blocks (~1.2 GB), practically lossless
  <name>-q4_k_m.gguf when llama.cpp's `llama-quantize` is on PATH (~0.7 GB)
  Modelfile          for `ollama create`: a plain completion model, the project's sampling settings
  export.json        what each file was made from, its size and its round-trip figures
Each file is written under a temporary name and renamed when complete; then it is read back with
transformers and checked: top-1 next-token agreement and perplexity against the source model on
the novel's held-out windows, and the tokenizer's ids on a page of the novel.
"""
import json
import shutil
import subprocess
from dataclasses import dataclass

from chateau import generation, gguf_files, lineage, stages
from chateau.cli import StageError, parse_settings, project_dir, run, say, setting

@dataclass
class Settings:
    project_dir: str = setting("", "project folder (default: $KAFKA_PROJECT_DIR or /project)")
    stage: str = setting(stages.CURRICULUM_END, f"finished stage to export: {', '.join(stages.EXPORTABLE)} (a merged stage: its merged/ model)")
    types: str = setting("f16,q8_0", f"comma-separated GGUF types: {', '.join(gguf_files.EXPORT_TYPES)}")
    name: str = setting("kafka-chateau", "file name stem: <name>-<type>.gguf, and the Ollama model's name")
    context: int = setting(2048, "context length written in the Modelfile (num_ctx)")
    verify: bool = setting(True, "read each file back with transformers and check it against the source model")
    overwrite: bool = setting(False, "export again although the files were made from this model already")

    def problems(self):
        out = []
        if self.stage not in stages.EXPORTABLE:
            out.append(f"--stage must be one of {', '.join(stages.EXPORTABLE)}: stages with full weights (got {self.stage})")
        unknown = [t for t in self.types.split(",") if t not in gguf_files.EXPORT_TYPES]
        if unknown or not self.types:
            out.append(f"--types takes {', '.join(gguf_files.EXPORT_TYPES)} (got {self.types!r})")
        if not self.name or "/" in self.name:
            out.append(f"--name must be a plain file name stem (got {self.name!r})")
        if self.context <= 0:
            out.append(f"--context must be > 0 (got {self.context})")
        return out


def modelfile(gguf_name, settings):
    """Ollama's recipe: the file, no chat template (a completion model), the project's sampling."""
    sampling = generation.Sampling()
    return (f"# ollama create {settings.name} -f Modelfile && ollama run {settings.name} \"K. ouvrit la porte.\"\n"
            f"FROM ./{gguf_name}\n"
            f'TEMPLATE """{{{{ .Prompt }}}}"""\n'
            f"PARAMETER temperature {sampling.temperature}\n"
            f"PARAMETER top_p {sampling.top_p}\n"
            f"PARAMETER repeat_penalty {sampling.repetition_penalty}\n"
            f"PARAMETER num_ctx {settings.context}\n")


def main(argv=None):
    settings = parse_settings(Settings, argv, description=__doc__)
    project = project_dir(settings.project_dir)
    source = stages.model_dir(project, settings.stage)
    if not (stages.folder(project, settings.stage) / "metrics.json").exists() or not (source / "config.json").exists():
        raise StageError(f"step {settings.stage}'s model is missing or unfinished at {source}: "
                         f"{stages.stage(settings.stage).hint()}")
    lineage.check_current(project, settings.stage)
    out_dir = stages.export_dir(project, settings.stage)
    record_path = out_dir / "export.json"
    model_digest = lineage.model_digest(source)

    with lineage.StageLock(out_dir, "4"):
        record = json.loads(record_path.read_text()) if record_path.exists() else {}
        reference = None  # the source model in float32, loaded once for every file's check
        out_dir.mkdir(parents=True, exist_ok=True)
        for kind in settings.types.split(","):
            path = out_dir / f"{settings.name}-{kind}.gguf"
            done = record.get(path.name, {})
            # The one "already done" rule (chateau/lineage.py): a file whose record matches it and
            # this model is done; one from another model needs --overwrite; a half-written one is not a file.
            identity = {"source": model_digest, "stage": settings.stage, "type": kind}
            whole = path.exists() and done.get("bytes") == path.stat().st_size
            if lineage.already_done(done.get("identity") if whole else None, identity, settings.overwrite, str(path)):
                say(f"already exported: {path} (pass --overwrite to write it again)")
                continue
            say(f"4: writing {path} ...")
            gguf_files.export_gguf(source, path, kind, settings.name)
            done = {"identity": identity, "stage": settings.stage, "bytes": path.stat().st_size}
            if settings.verify:
                reference = reference or gguf_files.float_model(source)
                done["round_trip"] = gguf_files.round_trip(source, path, project, source=reference)
                say(f"4: {path.name} read back: {done['round_trip']}")
            record[path.name] = done
            record_path.write_text(json.dumps(record, indent=2) + "\n")

        # q4_k_m: from the f16 file, with llama.cpp's own quantizer when it is installed.
        f16 = out_dir / f"{settings.name}-f16.gguf"
        quantizer = shutil.which("llama-quantize")
        if quantizer and f16.exists():
            q4 = out_dir / f"{settings.name}-q4_k_m.gguf"
            subprocess.run([quantizer, str(f16), str(q4.with_name(q4.name + ".partial")), "Q4_K_M"], check=True)
            q4.with_name(q4.name + ".partial").rename(q4)
        else:
            say(f"4: for a smaller q4_k_m file, run llama.cpp's `llama-quantize {f16.name} {settings.name}-q4_k_m.gguf Q4_K_M`")
        best = next(out_dir / f"{settings.name}-{k}.gguf" for k in ("q8_0", "f16") if (out_dir / f"{settings.name}-{k}.gguf").exists())
        (out_dir / "Modelfile").write_text(modelfile(best.name, settings))
    files = ", ".join(f"{p.name} ({p.stat().st_size / 2**20:.1f} MiB)" for p in sorted(out_dir.glob("*.gguf")))
    say(f"4 done: {files} and a Modelfile in {out_dir}. Next: llama.cpp `llama-cli -m {best} -p \"...\"`, "
        f"or `cd {out_dir} && ollama create {settings.name} -f Modelfile`")


if __name__ == "__main__":
    run(main)
