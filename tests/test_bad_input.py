"""Bad input and faults, grouped by kind: each is one line that names what was wrong and
what is expected (exit 2), before anything trains, with nothing stored or lost; a bug keeps
its traceback (exit 1); Ctrl-C says how to resume (exit 130)."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import registry
from bench.artefacts import reference_files
from bench.cli import commands
from bench.cli.main import main
from bench.errors import UserError
from bench.results import receipts
from bench.results.backup import backup_path, take_backup
from bench.results.store import ResultStore, load_results


def _error(capsys, argv: list[str]) -> str:
    """Run the command line; it must refuse with one ``error:`` line and exit 2."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# -- 1. settings refused before anything trains --------------------------------------------

@pytest.mark.parametrize("argv, says", [
    (["--seeds", "99999999999999999999"], "expected an integer in [0, 4,294,967,295]"),
    (["--split-seed", "99999999999999999999"], "expected an integer in [0, 4,294,967,295]"),
    (["--data-option", "scale=1e308"], "expected a number in (0, 100]"),
    (["--data-option", "missing_rate=0.5"], "missing_rate=0.5 has no effect with missing=none"),
    (["--data-option", "missing_seed=3"], "missing_seed=3 has no effect with missing=none"),
    (["--metric", "bogus"], "invalid choice: 'bogus'"),
    (["--models", "flexmoe", "--set", "hidden=100000000"], "GiB available; lower the size"),
    (["--models", "flexmoe", "--set", "top_k=99"], "refuses its settings: top_k must be in"),
])
def test_bad_run_settings_are_one_line_and_store_nothing(tmp_path, capsys, argv, says):
    store = tmp_path / "runs.sqlite"
    err = _error(capsys, ["run", "--models", "tf", "--profile", "smoke", "--store", str(store),
                          *argv])
    assert says in err
    assert not store.exists() or not load_results(store).shape[0]


@pytest.mark.parametrize("argv, says", [
    (["perf", "--models", ""], "--models is empty"),
    (["perf", "--warmup", "-1"], "--warmup must be 0 or more"),
    (["perf", "--busy", "-2"], "--busy must be 0 or more"),
    (["perf", "--whole-run", "-1"], "--whole-run must be 0 or more"),
])
def test_bad_perf_options(capsys, argv, says):
    assert says in _error(capsys, argv)


def test_report_refuses_an_out_that_is_a_file_and_a_store_without_runs(tmp_path, capsys):
    out = tmp_path / "taken"
    out.write_text("mine")
    store = tmp_path / "runs.sqlite"
    assert "is a file; name a folder" in _error(
        capsys, ["report", "--store", str(store), "--out", str(out)])
    assert out.read_text() == "mine"
    assert "no results store at" in _error(capsys, ["report", "--store", str(store)])
    ResultStore(store).close()  # an empty store
    assert "holds no finished run yet" in _error(capsys, ["report", "--store", str(store)])


# -- 2. plug-ins ---------------------------------------------------------------------------

@pytest.mark.parametrize("source, says", [
    ("def broken(:\n", "SyntaxError"),
    ("raise RuntimeError('no licence server')\n", "RuntimeError: no licence server"),
    ("import a_module_that_does_not_exist_anywhere\n", "No module named"),
])
def test_a_plug_in_that_cannot_be_imported_is_one_line(tmp_path, capsys, source, says):
    plugin = tmp_path / "myplugin.py"
    plugin.write_text(source)
    err = _error(capsys, ["list", "models", "--plugin", str(plugin)])
    assert "myplugin.py" in err and says in err


_BAD_MODEL = '''
import torch
from bench.model import BenchModel
from bench.registry import register_model


@register_model("bad-{name}")
class Bad(BenchModel):
    def __init__(self, spec):
        super().__init__(spec)
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, batch):
        b, c = len(batch.y), self.spec.num_classes
        return {output}
'''


@pytest.mark.parametrize("name, output, says", [
    ("flat", "self.w * torch.zeros(b)", "it returned Tensor"),
    ("short", "(self.w * torch.zeros(b, c - 1), self.w.sum() * 0)", "logits have shape"),
    ("extra", "(self.w * torch.zeros(b, c + 1), self.w.sum() * 0)", "logits have shape"),
    ("nan", "(self.w * torch.zeros(b, c) + (0.0 if self.training else float('nan')), "
     "self.w.sum() * 0)", "not finite"),
])
def test_a_model_breaking_the_contract_fails_its_run_with_the_contract_spelled_out(
        tmp_path, capsys, monkeypatch, name, output, says):
    registry.load_builtins()
    monkeypatch.setattr(registry, "_models", dict(registry._models))  # the plug-in leaves
    plugin = tmp_path / f"bad_{name}.py"
    plugin.write_text(_BAD_MODEL.format(name=name, output=output))
    store = tmp_path / "runs.sqlite"
    main(["run", "--plugin", str(plugin), "--models", f"bad-{name}", "--combos", "IG",
          "--seeds", "0", "--profile", "smoke", "--store", str(store)])
    row = load_results(store).iloc[0]
    assert row["status"] == "failed" and says in row["error"], row["error"]
    if name != "nan":
        assert "forward(batch) must return (logits, aux_loss)" in row["error"]


# -- 3. the user's files -------------------------------------------------------------------

def _folder(root: Path, n: int = 40) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    ids = [f"p{i}" for i in range(n)]
    pd.DataFrame({"id": ids, "label": [i % 2 for i in range(n)]}).to_csv(
        root / "labels.csv", index=False)
    rng = np.random.default_rng(0)
    for name in ("X_first", "Y_second"):
        x = pd.DataFrame(rng.normal(size=(n, 3)), columns=["a", "b", "c"])
        x.insert(0, "id", ids)
        x.to_csv(root / f"{name}.csv", index=False)
    return root


def _folder_error(capsys, root: Path) -> str:
    return _error(capsys, ["run", "--models", "tf", "--dataset", f"folder:{root}",
                           "--store", str(root / "runs.sqlite"), "--dry-run"])


def test_a_blank_split_cell_names_the_line(tmp_path, capsys):
    root = _folder(tmp_path / "d")
    parts = ["train"] * 30 + ["val"] * 5 + ["test"] * 5
    parts[3] = " "
    pd.DataFrame({"id": [f"p{i}" for i in range(40)], "split": parts}).to_csv(
        root / "split.csv", index=False)
    assert "split.csv: empty split on line(s) 5" in _folder_error(capsys, root)


def test_a_split_seed_is_refused_where_the_split_comes_from_a_file(tmp_path, capsys):
    root = _folder(tmp_path / "d")
    parts = ["train"] * 30 + ["val"] * 5 + ["test"] * 5
    pd.DataFrame({"id": [f"p{i}" for i in range(40)], "split": parts}).to_csv(
        root / "split.csv", index=False)
    err = _error(capsys, ["run", "--models", "tf", "--dataset", f"folder:{root}",
                          "--split-seed", "3", "--dry-run"])
    assert "--split-seed 3 has no effect, its split comes from" in err and "split.csv" in err


def test_a_folder_named_like_a_modality_file_is_named(tmp_path, capsys):
    root = _folder(tmp_path / "d")
    (root / "Z_notes.csv").mkdir()
    assert "Z_notes.csv: is a folder" in _folder_error(capsys, root)


@pytest.mark.parametrize("content", ["latin-1", "binary"])
def test_a_csv_that_is_not_utf8_names_the_file(tmp_path, capsys, content):
    root = _folder(tmp_path / "d")
    target = root / "X_first.csv"
    if content == "latin-1":
        target.write_bytes(target.read_text().replace("a,b", "é,b").encode("latin-1"))
    else:
        target.write_bytes(bytes(range(256)) * 4)
    assert "X_first.csv: not UTF-8 text" in _folder_error(capsys, root)


def test_labels_without_any_modality_are_left_out_and_said(tmp_path, caplog):
    from bench.data.folder import read_folder

    root = _folder(tmp_path / "d")
    with open(root / "labels.csv", "a") as fh:
        fh.write("p998,1\np999,0\n")
    data = read_folder(root)
    assert len(data.raw.ids) == 40 and "p999" not in set(data.raw.ids)
    assert "2 id(s) appear in no modality file" in caplog.text


def test_context_lines_are_left_out_when_the_data_changed_since_the_runs(tmp_path, capsys,
                                                                         caplog):
    root = _folder(tmp_path / "d", n=60)
    store = str(tmp_path / "runs.sqlite")
    assert main(["run", "--models", "tf", "--dataset", f"folder:{root}", "--seeds", "0",
                 "--profile", "smoke", "--store", store]) == 0
    assert "(logistic regression)" in capsys.readouterr().out
    labels = pd.read_csv(root / "labels.csv")
    labels["label"] = 1 - labels["label"]
    labels.to_csv(root / "labels.csv", index=False)
    assert main(["table", "--store", store]) == 0
    assert "(logistic regression)" not in capsys.readouterr().out
    assert "its data changed since these runs trained" in caplog.text


# -- 4. reference files --------------------------------------------------------------------

def _line(**changes):
    """One well-formed reference line, with ``changes``."""
    base = {"model": "tf", "combo": "IG", "seed": 0, "key": "k", "best_epoch": 1, "n_test": 9,
            **{m: 0.5 for m in reference_files.METRICS},
            **dict.fromkeys(reference_files.EXACT, 1)}
    return {**base, **changes}


def _reference(folder: Path, dataset: str = "synthetic-adni", runs: list | None = None) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / "synthetic-adni.json"
    path.write_text(reference_files.Reference(dataset, {}, runs or [_line()]).text())
    return path


@pytest.mark.parametrize("make, says", [
    (lambda f: _reference(f).write_text(
        _reference(f).read_text().replace('"environment": {}', '"environment": null')),
     "an 'environment' object"),
    (lambda f: (f / "synthetic-adni.json").mkdir(parents=True), "is a folder"),
    (lambda f: _reference(f, runs=[_line(test_acc="0.5x")]), "line 3: test_acc='0.5x' is not"),
    (lambda f: _reference(f, runs=[_line(), _line(key="k2")]),
     "line 4: tf IG seed 0 is already on line 3"),
    (lambda f: _reference(f, dataset="synthetic-mimic"),
     "its 'dataset' field says 'synthetic-mimic'"),
    (lambda f: _reference(f, runs=[{"model": "tf"}]), "the run lacks"),
])
def test_a_damaged_reference_file_names_file_and_line_before_anything_trains(
        tmp_path, monkeypatch, make, says):
    from bench.artefacts import reference

    folder = tmp_path / "refs"
    folder.mkdir()
    make(folder)
    monkeypatch.setattr(reference, "run_cells", lambda *a, **k: pytest.fail("trained first"))
    with pytest.raises(UserError, match="synthetic-adni.json") as info:
        reference.run_check(folder=folder)
    assert says in str(info.value)


# -- 5. faults -----------------------------------------------------------------------------

def _rows(n: int, start: int = 0) -> list[dict]:
    return [{"key": f"k{i:04d}", "status": "ok", "model": "tf", "dataset": "d", "combo": "IG",
             "seed": i, "created_at": f"{i:06d}", "error": "x" * 400} for i in range(start, n)]


def test_a_damaged_store_is_one_line_and_recover_brings_every_run_back(tmp_path, capsys):
    path = tmp_path / "runs.sqlite"
    with ResultStore(path) as store:
        for row in _rows(300):
            store.write(row)
        take_backup(store)
        for row in _rows(310, 300):  # written after the backup: kept as receipts
            store.write(row)
            receipts.keep_row(path, row)
    assert backup_path(path).is_file()
    raw = bytearray(path.read_bytes())
    page = 4096
    raw[20 * page:24 * page] = b"\xff" * (4 * page)  # pages in the middle of the table
    path.write_bytes(bytes(raw))
    err = _error(capsys, ["status", "--store", str(path)])
    assert "is damaged" in err and f"run_bench.py recover --store {path}" in err
    assert main(["recover", "--store", str(path)]) == 0
    assert "310 run(s)" in capsys.readouterr().out
    assert set(load_results(path)["key"]) == {r["key"] for r in _rows(310)}
    assert list(tmp_path.glob("runs.sqlite.damaged-*"))  # kept beside it


def test_a_full_disk_leaves_no_temporary_receipt(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(receipts.os, "fsync", full)
    with pytest.raises(OSError):
        receipts.write_receipt(tmp_path, {"key": "a", "status": "ok"})
    assert not list(tmp_path.iterdir())


def test_a_full_disk_and_ctrl_c_and_a_bug_each_get_their_answer(tmp_path, capsys,
                                                                   monkeypatch):
    store = ["--store", str(tmp_path / "runs.sqlite")]

    def fails(exc):
        def command(args):
            raise exc
        return command

    monkeypatch.setitem(commands.COMMANDS, "status",
                        fails(OSError(errno.ENOSPC, "No space left on device")))
    assert "the disk is full" in _error(capsys, ["status", *store])
    monkeypatch.setitem(commands.COMMANDS, "run", fails(KeyboardInterrupt()))
    assert main(["run", "--models", "tf", *store]) == 130
    assert "interrupted: 0 run(s) stored" in capsys.readouterr().err
    monkeypatch.setitem(commands.COMMANDS, "status", fails(RuntimeError("a bug")))
    assert main(["status", *store]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: a bug" in err and "internal error" in err


def test_ingested_receipts_are_kept_until_the_next_backup(tmp_path):
    path = tmp_path / "runs.sqlite"
    with ResultStore(path) as store:
        receipts.write_receipt(store.receipts_dir, _rows(1)[0])
        assert store.ingest_receipts() == 1
        kept = receipts.pending(receipts.kept_dir(path))
        assert [p.name for p in kept] == ["k0000.json"]
        take_backup(store)
        assert not receipts.pending(receipts.kept_dir(path))
    with sqlite3.connect(backup_path(path)) as copy:
        assert copy.execute("SELECT key FROM runs").fetchall() == [("k0000",)]
