"""The Python distribution: what `python -m build` puts in the sdist and the wheel, and that
`pip install monitord-*.tar.gz` on Debian 12's Python passes the sdist's own tests with every
dependency at its declared floor (Debian 12's versions: prometheus-client 0.16, bcrypt 3.2.2,
systemd-python 235)."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

from monitord import __version__
from monitord.config import BasicAuthUser
from monitord.serve.server import BasicAuth
from tests.conftest import ROOT, need_tool

# PHP's documented password_hash() example: a $2y$ hash made by another implementation.
PHP_2Y = "$2y$10$.vGA1O9wmRjrwAVXD98HNOgsNpDczlqm3Jq7KnEd1rVAGv3Fykk1a"
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian 12's 3.11, as an operator's pip install uses


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_auth_accepts_2y_hashes() -> None:
    """A $2y$ hash (htpasswd -B, PHP) checks with every supported bcrypt, 3.2.2 included."""
    import bcrypt

    auth = BasicAuth((BasicAuthUser("prometheus", PHP_2Y),))
    assert auth.check(basic("prometheus", "rasmuslerdorf")), getattr(bcrypt, "__version__", "?")
    assert not auth.check(basic("prometheus", "rasmuslerdorF"))
    assert not auth.check(basic("grafana", "rasmuslerdorf"))


def floors() -> dict[str, str]:
    """name -> lowest version, from pyproject.toml's `name>=X` dependencies."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    found = {}
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", dep.split(";")[0].strip())
        assert m, f"dependency without a plain floor: {dep}"
        found[m.group(1)] = m.group(2)
    return found


def test_floors_are_debian_12s() -> None:
    """The floors admit Debian 12's python3-prometheus-client, -systemd and -bcrypt."""
    debian_12 = {"prometheus-client": "0.16.0", "systemd-python": "235", "bcrypt": "3.2.2"}
    declared = floors()
    for name, version in debian_12.items():
        floor = tuple(int(x) for x in declared[name].split("."))
        assert floor <= tuple(int(x) for x in version.split(".")), (name, declared[name])


def source_copy(dest: Path) -> Path:
    """This tree's files (tracked and new, not ignored) copied to dest/src."""
    src = dest / "src"
    if (ROOT / ".git").exists() and shutil.which("git"):
        listing = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        for name in listing:
            if (ROOT / name).exists():
                (src / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, src / name, follow_symlinks=False)
    else:
        shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(".venv", ".cache"))
    return src


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sdist, wheel) as `python -m build` makes them (setuptools from PyPI, isolated)."""
    pytest.importorskip("build", reason="pip install -e '.[test]' installs it")
    work = tmp_path_factory.mktemp("dist")
    src = source_copy(work)
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(work / "dist"), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    sdist = work / "dist" / f"monitord-{__version__}.tar.gz"
    wheels = list((work / "dist").glob(f"monitord-{__version__}-*.whl"))
    assert sdist.exists() and len(wheels) == 1
    return sdist, wheels[0]


@pytest.mark.slow
def test_sdist_holds_what_builds_tests_and_deploys(dists: tuple[Path, Path]) -> None:
    """The sdist has deploy/, contrib/, docs/, tests/ with data, debian/, scripts/, LICENSE."""
    sdist, _ = dists
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    if (ROOT / ".git").exists() and shutil.which("git"):
        # Every file of the repository but .gitignore itself.
        tracked = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        missing = sorted(set(tracked) - names - {".gitignore"})
        assert missing == [], f"not in the sdist: {missing}"
    for name in (
        "LICENSE",
        "bootstrap",
        "deploy/monitord.toml",
        "deploy/systemd/monitord.service",
        "deploy/audit/plugins.d/monitord.conf",
        "deploy/prometheus/monitord.rules.yml",
        "contrib/grafana/monitord.json",
        "docs/INSTALL.md",
        "debian/control",
        "debian/rules",
        "scripts/install.sh",
        "tests/conftest.py",
        "tests/data/simulated.log",
        "monitord/audit/_fastparse.c",
    ):
        assert name in names, name
    assert not [n for n in names if re.search(r"(__pycache__|\.pyc$|\.so$|^\.venv/|^\.cache/)", n)]


@pytest.mark.slow
def test_wheel_states_the_spdx_license(dists: tuple[Path, Path]) -> None:
    """The wheel's metadata: License-Expression Apache-2.0 with the LICENSE file, the floors."""
    _, wheel = dists
    with zipfile.ZipFile(wheel) as zf:
        meta = zf.read(f"monitord-{__version__}.dist-info/METADATA").decode()
        assert f"monitord-{__version__}.dist-info/licenses/LICENSE" in zf.namelist()
    assert "License-Expression: Apache-2.0" in meta
    for name, version in floors().items():
        assert f"Requires-Dist: {name}>={version}" in meta


@pytest.mark.slow
def test_sdist_installs_and_passes_its_tests_at_the_floors(
    dists: tuple[Path, Path], tmp_path: Path
) -> None:
    """pip install of the sdist on Debian 12's Python with every dependency at its floor; the
    sdist's own tests (those needing no root or real daemons) pass against that install."""
    need_tool("gcc")  # systemd-python and the C accelerator are built from source
    need_tool("pkg-config")
    if not Path(SYSTEM_PYTHON).exists():
        pytest.fail(f"{SYSTEM_PYTHON} (Debian's python3) is needed")
    sdist, _ = dists
    venv = tmp_path / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True, timeout=120)
    pins = [f"{name}=={version}" for name, version in floors().items()]
    pip = [str(venv / "bin/python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    for args in ([*pins, "pytest", "hypothesis"], [str(sdist)]):
        result = subprocess.run([*pip, *args], capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
    listed = subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.lower()
    for pin in pins:
        assert pin.lower().replace("_", "-") in listed.replace("_", "-"), pin
    unpacked = tmp_path / "unpacked"
    with tarfile.open(sdist) as tar:
        # Built by this test from this tree. Debian 12's Python 3.11.2 has no `filter`.
        if hasattr(tarfile, "data_filter"):
            tar.extractall(unpacked, filter="data")
        else:
            tar.extractall(unpacked)
    tree = unpacked / f"monitord-{__version__}"
    # The installed monitord, not the sdist's tree: no current directory on the path (also in
    # the tests' subprocesses), and the tests' root appended after site-packages.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONSAFEPATH"] = "1"
    result = subprocess.run(
        [
            str(venv / "bin/python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "--import-mode=append", "-m", "not slow",
            "tests/serve", "tests/sources", "tests/alerts", "tests/daemon/test_config.py",
            "tests/deploy/test_python_packaging.py::test_basic_auth_accepts_2y_hashes",
        ],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert re.search(r"\d+ passed", result.stdout)
    where = subprocess.run(
        [
            str(venv / "bin/python"),
            "-P",
            "-c",
            "import monitord.audit.parser as p; print(p.__file__)",
        ],
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(venv) in where
