"""A non-editable install works: the wheel carries the code, the data and the paper's numbers.

The test builds a wheel from a copy of the checkout, installs it into a fresh virtual
environment and runs the installed ``flexmoe-bench`` from a working directory outside the
repository.

How it makes sure the wheel's copy is the one imported, not this checkout (which the test
environment usually has as an editable install):

* The virtual environment is created *without* system site packages. Its dependencies
  (torch, pandas, …) come from a ``.pth`` file in its own site-packages that lists the site
  directories of the interpreter running the tests (``site.getsitepackages()`` and the user
  site). Directories added by a ``.pth`` line are plain ``sys.path`` entries: the ``.pth``
  files *inside* them are not executed, so the editable install's ``__editable__…`` finder
  (or an old-style ``.pth`` that puts the checkout on ``sys.path``) never loads. The venv's
  own site-packages, holding the wheel, also comes first on ``sys.path``.
  (``venv --system-site-packages`` would run that finder — it then loses to ``sys.path``
  only by its position at the end of ``sys.meta_path`` — and, when the tests themselves run
  in a virtual environment, it would expose the base interpreter's packages instead of the
  test environment's.)
* ``PYTHONNOUSERSITE=1`` keeps the user site's ``.pth`` files out too; ``PYTHONPATH`` and
  ``$FLEXMOE_BENCH_DATASETS`` are removed; the commands run in a temporary directory.
* The installed Python then reports, and the test asserts, that ``bench``, the data folder
  and the paper folder all lie inside the virtual environment, that no editable finder is on
  ``sys.meta_path`` and that the checkout is not on ``sys.path``.

pip reads no configuration file (``PIP_CONFIG_FILE`` is the null device) and installs with
``--no-deps --no-index``: nothing is downloaded. The build uses ``--no-build-isolation``
and so needs setuptools in the test environment (the ``dev`` extra requires it).
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
#: Top-level entries of the checkout that a build does not need (outputs, caches, VCS).
NOT_COPIED = {".git", "build", "dist", ".venv", "venv", "bench-results", "reproduce",
              ".benchmarks", ".pytest_cache", ".ruff_cache"}
SHIPPED = {"datasets": "bench/_shipped/datasets", "results/paper": "bench/_shipped/paper"}

PROBE = """
import json, sys
import bench, bench.artefacts.views
from bench.data.sources import datasets_root
from bench.registry import create_dataset
data = create_dataset("mfeat")
table = bench.artefacts.views.published("table1_adni_acc.csv")
print(json.dumps({
    "bench": bench.__file__, "datasets": str(datasets_root()),
    "paper": str(bench.artefacts.views.PAPER_DIR), "mfeat": [data.name, list(data.letters)],
    "table1": list(table.shape), "sys_path": sys.path,
    "meta_path": [type(f).__module__ + "." + type(f).__qualname__ if not isinstance(f, type)
                  else f.__module__ + "." + f.__qualname__ for f in sys.meta_path]}))
"""


def _files(folder: Path) -> set[str]:
    """Files under ``folder`` (relative, POSIX), without hidden files and caches."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def _ignore(directory: str, names: list[str]) -> set[str]:
    top = Path(directory) == ROOT
    return {n for n in names if n == "__pycache__" or n.endswith(".egg-info")
            or (top and n in NOT_COPIED)}


def _run(cmd: list, env: dict, cwd: Path, timeout: int = 120) -> str:
    done = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _venv(path: Path, env: dict) -> tuple[Path, Path]:
    """A bare virtual environment that sees the test environment's packages (see above)."""
    _run([sys.executable, "-m", "venv", "--without-pip", path], env, path.parent)
    bindir = path / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / ("python.exe" if os.name == "nt" else "python")
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                                       "['purelib'])"], env, path.parent).strip())
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        dirs.append(site.getusersitepackages())
    dirs += [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    dirs = [d for d in dict.fromkeys(dirs) if os.path.isdir(d) and Path(d).resolve() != ROOT]
    (purelib / "_test_environment.pth").write_text("\n".join(dirs) + "\n")
    return python, bindir


def test_wheel_ships_code_data_and_paper_numbers_and_runs_installed(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PIP_") and k not in ("PYTHONPATH", "FLEXMOE_BENCH_DATASETS")}
    env.update(PYTHONNOUSERSITE="1", PIP_CONFIG_FILE=os.devnull,
               PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONDONTWRITEBYTECODE="1")

    # Build from a copy: an in-place build would write build/ into the shared checkout
    # (and could pick up stale files from an earlier build/lib).
    src, dist = tmp_path / "src", tmp_path / "dist"
    shutil.copytree(ROOT, src, ignore=_ignore)
    _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
          "--no-index", "-w", dist], env, src)
    (wheel,) = dist.glob("flexmoe_bench-*.whl")

    # The wheel holds every module of the checkout and every shipped file.
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in ("bench", "baselines", "flexmoe"):
        missing = {f"{package}/{f}" for f in _files(ROOT / package) if f.endswith(".py")} - names
        assert not missing, f"modules missing from the wheel: {sorted(missing)}"
    for folder, inside in SHIPPED.items():
        expected = {f"{inside}/{f}" for f in _files(ROOT / folder)}
        assert expected and not expected - names, sorted(expected - names)
    for name in ("mfeat/mfeat-fac.csv.gz", "mfeat/README.md", "synthetic-adni/README.md"):
        assert f"bench/_shipped/datasets/{name}" in names
    assert {"bench/_shipped/paper/table1_adni_acc.csv", "bench/_shipped/paper/README.md"} <= names

    venv, work = tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    python, bindir = _venv(venv, env)
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
          wheel], env, work)

    listing = _run([bindir / "flexmoe-bench", "list", "datasets"], env, work)
    for name in ("synthetic-adni", "synthetic-mimic", "mfeat", "adni", "mimic", "folder:PATH"):
        assert f"\n{name}\n" in f"\n{listing}", listing
    assert "UCI Multiple Features" in listing

    probe = json.loads(_run([python, "-c", PROBE], env, work).strip().splitlines()[-1])
    venv_root = venv.resolve()
    for key in ("bench", "datasets", "paper"):
        assert Path(probe[key]).resolve().is_relative_to(venv_root), (key, probe[key])
    assert Path(probe["datasets"]).name == "datasets" and Path(probe["paper"]).name == "paper"
    assert not any("editable" in f.lower() for f in probe["meta_path"]), probe["meta_path"]
    assert not any(p and Path(p).resolve() == ROOT for p in probe["sys_path"])
    assert probe["mfeat"] == ["mfeat", ["F", "A", "K", "P", "Z", "M"]]
    assert probe["table1"] == list(pd.read_csv(ROOT / "results/paper/table1_adni_acc.csv").shape)


def test_resources_resolve_the_checkout_and_the_override(tmp_path, monkeypatch):
    from bench import resources
    from bench.data.sources import datasets_root

    if Path(resources.__file__).resolve().parents[1] == ROOT:  # run from this checkout
        assert resources.shipped("datasets") == ROOT / "datasets"
        assert resources.shipped("paper") == ROOT / "results" / "paper"
    monkeypatch.setenv("FLEXMOE_BENCH_DATASETS", str(tmp_path))
    assert datasets_root() == tmp_path
    # A datasets/ folder beside an installed bench (the `datasets` library in site-packages)
    # is no checkout: only a pyproject.toml beside bench/ makes one.
    (tmp_path / "site-packages" / "datasets").mkdir(parents=True)
    monkeypatch.setattr(resources, "__file__",
                        str(tmp_path / "site-packages" / "bench" / "resources.py"))
    assert resources.checkout_root() is None
