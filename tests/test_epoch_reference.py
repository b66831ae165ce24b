"""tools/epoch_reference.py: a run's per-epoch step beside a fresh model's, in one process."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_each_epoch_is_timed_beside_a_fresh_reference(capsys):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import epoch_reference
    finally:
        sys.path.pop(0)
    assert epoch_reference.main(["--epochs", "2", "--steps", "2", "--combo", "IG",
                                 "--data-option", "scale=0.1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("flexmoe on synthetic-adni IG, profile paper, 2 epochs, 1 thread")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[3:5]]
    assert [r[0] for r in rows] == ["0", "1"]
    for _, run, reference, ratio in rows:
        assert float(run) > 0 and float(reference) > 0
        assert abs(float(ratio) - float(run) / float(reference)) < 2e-3
    assert lines[5].startswith("run / reference: ")
