"""A stage is what it is, not where it was made; and the ways a real disk or a real copy goes wrong
are one line each. Every case runs on a copy of the finished tiny project, as a user would: the
outcome (later stages current, or one line with nothing finished changed and nothing half-written
left) is asserted."""
import pickle
import shutil
import subprocess

import pytest
import torch

from chateau import lineage, stages, training
from conftest import hashes, one_error_line, run_script, tiny_flags

CONTINUE, EXPORT = stages.script_of("3"), stages.script_of("4")
SHORT = ["--new-tokens", "8", "--context-tokens", "64", "--chunk-tokens", "8"]
CURRICULUM = ("2a", "2b", "2c")


def prepare_again(project, stage, *flags):
    script = stages.script_of(stage)
    return run_script(project, script, *tiny_flags(script), "--overwrite", *flags)


def test_identical_work_keeps_every_later_stage_current_here_and_in_a_moved_project(project, tmp_path):
    digests = {name: lineage.stage_digest(project, name) for name in ("1a", "1b", "1c", *CURRICULUM)}
    prepare_again(project, "1a")
    prepare_again(project, "1c")
    assert {name: lineage.stage_digest(project, name) for name in digests} == digests
    assert all(lineage.stale_reason(project, name) is None for name in CURRICULUM)
    run_script(project, CONTINUE, *SHORT)  # no --allow-stale needed

    # The same project moved to a folder with spaces and non-ASCII letters, 1c prepared there again.
    moved = tmp_path / "un dossier déplacé" / "Le Château"
    shutil.copytree(project, moved)
    prepare_again(moved, "1c")
    assert lineage.stage_digest(moved, "1c") == digests["1c"]
    assert all(lineage.stale_reason(moved, name) is None for name in CURRICULUM)
    run_script(moved, CONTINUE, *SHORT)

    # A real change still makes what was made from it stale.
    prepare_again(moved, "1a", "--seq-len", "32")
    assert "1a changed" in lineage.stale_reason(moved, "2a")
    prepare_again(moved, "1c", "--stride", "64")
    assert "1c changed" in lineage.stale_reason(moved, "2c")


def test_a_truncated_prepared_shard_is_one_line_and_the_finished_stage_is_untouched(project):
    shard = next(stages.folder(project, "1a").glob("train/*.arrow"))
    shard.write_bytes(shard.read_bytes()[:shard.stat().st_size // 2])
    finished = hashes(stages.folder(project, "2a"))
    script = stages.script_of("2a")
    line = one_error_line(run_script(project, script, *tiny_flags(script), "--overwrite", check=False), str(shard))
    assert "damaged" in line and f"python {stages.script_of('1a')} --overwrite" in line
    assert hashes(stages.folder(project, "2a")) == finished


def test_an_adapter_offered_as_a_pickle_is_one_line(project):
    adapter = stages.folder(project, "2b")
    (adapter / "adapter_model.safetensors").unlink()
    (adapter / "adapter_model.bin").write_bytes(pickle.dumps(print))  # a pickle names what it runs when loaded
    finished = hashes(stages.folder(project, "2c"))
    script = stages.script_of("2c")
    one_error_line(run_script(project, script, *tiny_flags(script), "--overwrite", check=False),
                   "adapter_model.bin is a pickle where an adapter is expected")
    assert hashes(stages.folder(project, "2c")) == finished


def test_a_pickled_checkpoint_file_is_named(project):
    out_dir = stages.folder(project, "2a")
    (out_dir / "metrics.json").unlink()
    shutil.rmtree(out_dir / "checkpoint-40")
    (out_dir / "checkpoint-20" / "scheduler.pt").write_bytes(pickle.dumps(print))
    script = stages.script_of("2a")
    one_error_line(run_script(project, script, *tiny_flags(script), check=False),
                   f"{out_dir / 'checkpoint-20' / 'scheduler.pt'} holds a pickle")


@pytest.fixture
def small_disk(tmp_path):
    """mount(size) -> a real tmpfs of `size` where this machine lets the test mount one (root, as
    here and in CI), else None: the test then simulates the full disk's error (said in its code)."""
    mounted = []

    def mount(size):
        point = tmp_path / f"small-disk-{len(mounted)}"
        point.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True).returncode:
            return None
        mounted.append(point)
        return point
    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_a_disk_that_fills_up_during_a_checkpoint_is_one_line_and_the_rerun_resumes(project, small_disk, monkeypatch):
    out_dir = stages.folder(project, "2a")
    shutil.rmtree(out_dir)  # 2a from the start, its folder on a disk too small for a checkpoint
    script = stages.script_of("2a")
    disk = small_disk("1m")  # the tiny model's first checkpoint (weights + optimizer) needs ~1 MiB
    if disk is not None:
        out_dir.symlink_to(disk, target_is_directory=True)
    else:  # simulated: torch's zip writer fails as it does on a full disk
        real_save = torch.save

        def full_disk(obj, f, *args, **kwargs):
            if "checkpoint-" in str(f):
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1728 vs 1622")
            return real_save(obj, f, *args, **kwargs)
        monkeypatch.setattr(torch, "save", full_disk)
    line = one_error_line(run_script(project, script, *tiny_flags(script), check=False), "disk full")
    assert str(out_dir) in line and "a checkpoint needs" in line and "free" in line and "resumes" in line, line
    left = list(out_dir.glob("checkpoint-*"))
    assert all(training.is_complete_checkpoint(c) for c in left), "the incomplete checkpoint is removed"
    assert f"resumes from {max(left, key=training.checkpoint_step)}" in line if left else "resumes from the start" in line
    assert not (out_dir / "metrics.json").exists()
    # Space freed: the same command trains the stage to its end.
    if disk is not None:
        out_dir.unlink()
        shutil.copytree(disk, out_dir)
    else:
        monkeypatch.undo()
    run_script(project, script, *tiny_flags(script))
    assert lineage.is_finished(project, "2a")


def test_a_disk_that_fills_up_during_step_4_is_one_line_and_leaves_nothing(project, small_disk, monkeypatch):
    out_dir = stages.export_dir(project, "2a")
    shutil.rmtree(out_dir, ignore_errors=True)
    disk = small_disk("160k")  # the tiny model's f16 file is ~280 kB
    if disk is not None:
        out_dir.symlink_to(disk, target_is_directory=True)
    else:  # simulated: the GGUF writer's short write on a full disk
        from gguf import GGUFWriter
        real = GGUFWriter.write_tensors_to_file

        def short_write(self, *args, **kwargs):
            self.fout[0].write(b"\0" * 928)
            raise OSError("4096 requested and 928 written")
        monkeypatch.setattr(GGUFWriter, "write_tensors_to_file", short_write)
        assert real
    line = one_error_line(run_script(project, EXPORT, "--stage", "2a", "--types", "f16", check=False), "disk full")
    assert "kafka-chateau-f16.gguf" in line and "nothing was published" in line
    assert list(out_dir.iterdir()) == [], "no partial file is left"
