"""Run a numbered script as if the GPU had only N GiB: the benchmark's way to make a big card
behave like a 12 GB one (torch.cuda.set_per_process_memory_fraction), without the product
knowing about caps.

    python -m bench.capped 12 2a_train_gallica_fullweight.py --max-steps 12 ...
"""
import runpy
import sys


def cap_memory(cap_gib):
    """Limit this process's CUDA allocations to `cap_gib` GiB (nothing on CPU or without a cap)."""
    import torch
    if cap_gib and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, float(cap_gib) * 2**30 / total))


if __name__ == "__main__":
    cap, script, *flags = sys.argv[1:]
    cap_memory(float(cap))
    sys.argv = [script, *flags]
    runpy.run_path(script, run_name="__main__")
