"""What ``prepare`` prints when it has finished: where, how many, which split, what next."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _flat(counts: dict[str, Any]) -> str:
    parts = []
    for key, value in counts.items():
        if isinstance(value, dict):
            inner = ", ".join(f"{k} {v}" for k, v in value.items())
            parts.append(f"{key.replace('_', ' ')}: {inner}")
        else:
            parts.append(f"{key.replace('_', ' ')} {value}")
    return "; ".join(parts)


def summary(family: str, out: Path, manifest: dict[str, Any]) -> str:
    split = manifest["split"]
    sizes = ", ".join(f"{k} {v}" for k, v in split["sizes"].items())
    lines = [f"prepared {family} in {out}"
             + (f" (reused: {', '.join(manifest['reused_steps'])})"
                if manifest.get("reused_steps") else ""),
             f"  {_flat(manifest['counts'])}",
             f"  split {split['file']}: {sizes} (seed {split['seed']})"]
    if "quirks" in manifest:
        fixed = [q for q, v in manifest["quirks"].items() if v["here"] == "fixed"]
        lines.append(f"  released quirks: {len(manifest['quirks']) - len(fixed)} reproduced, "
                     f"fixed: {', '.join(fixed) or 'none'} (docs/prepare.md)")
    lines += [f"  data digest {manifest['data_digest']} (stored with every run on this "
              f"folder); manifest {out / 'manifest.json'}",
              f"next: python run_bench.py run --dataset {family} --data-option root={out}"]
    return "\n".join(lines)
