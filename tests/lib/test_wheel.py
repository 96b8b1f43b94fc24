"""The wheel: it claims no top-level import name but ``rskd_loss`` (the repository's ``baselines/`` folder
is installed as ``rskd_loss.baselines``), ships its licence, ``py.typed`` and the priors, takes its version
from ``rskd_loss.__version__``, and imports from the installed files alone (not from this checkout).
"""
from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import rskd_loss

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "-w", str(out), str(REPO)], check=True, capture_output=True, cwd=out)
    (whl,) = out.glob("rskd_loss-*.whl")
    return whl


def test_wheel_contents(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"rskd_loss"}
    for needed in ("rskd_loss/py.typed", "rskd_loss/baselines/__init__.py", "rskd_loss/baselines/oltr.py",
                   "rskd_loss/priors/rfmid.json", "rskd_loss/workflow.py", "rskd_loss/integrations/lightning.py"):
        assert needed in names
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    assert f"{dist_info}/licenses/LICENSE" in names
    assert dist_info == f"rskd_loss-{rskd_loss.__version__}.dist-info"  # one source for the version
    assert zipfile.ZipFile(wheel).read(f"{dist_info}/top_level.txt").decode().split() == ["rskd_loss"]


def test_installed_wheel_imports_without_the_checkout(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(site),
                    str(wheel)], check=True, capture_output=True)
    code = (
        "import importlib.util, rskd_loss, rskd_loss.baselines as b\n"
        "from rskd_loss.baselines import FocalLoss, build_criterion\n"
        "assert rskd_loss.__file__.startswith(%r), rskd_loss.__file__\n"
        "assert importlib.util.find_spec('baselines') is None\n"
        "print(type(build_criterion('focal')).__name__, b.__name__)\n" % str(site)
    )
    # -S: no site-packages .pth files (this checkout's editable install); the dependencies from PYTHONPATH
    env = {"PYTHONPATH": f"{site}:{sysconfig.get_paths()['purelib']}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["FocalLoss", "rskd_loss.baselines"]
