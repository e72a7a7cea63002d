"""The units in deploy/systemd pass `systemd-analyze verify`, with the paths
they name (/opt/pcapd/bin/...) pointed at this virtualenv's scripts, so that
verify checks the commands exist too. Any complaint fails: verify exits 0 on
an unknown directive and only prints it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
UNITS = ROOT / "deploy" / "systemd"
INSTALLED_BIN = "/opt/pcapd/bin/"  # where the units expect pcapd's scripts
INSTANCE = "lo"  # for the templates (pcapd-flow@.service -> pcapd-flow@lo.service)
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"


def units() -> list[Path]:
    return sorted(UNITS.glob("*.service"))


def verify(text: str, name: str, workdir: Path) -> list[str]:
    """What `systemd-analyze verify` says about a unit holding `text`, its
    /opt/pcapd/bin paths rewritten to this virtualenv's bin directory."""
    venv_bin = f"{Path(sys.executable).parent}/"
    assert Path(venv_bin, "pcapd").is_file(), "the pcapd script is not installed in the venv"
    unit = workdir / name
    unit.write_text(text.replace(INSTALLED_BIN, venv_bin))
    target = unit if "@." not in name else workdir / name.replace("@.", f"@{INSTANCE}.")
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(target)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    said = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    if done.returncode != 0 and not said:
        said = [f"systemd-analyze exited {done.returncode}"]
    return said


def test_every_unit_names_the_installed_scripts() -> None:
    assert {u.name for u in units()} >= {"pcapd.service", "pcapd-dnstap.service"}
    for unit in units():
        assert INSTALLED_BIN + "pcapd " in unit.read_text(), unit.name


@pytest.mark.parametrize("unit", units(), ids=lambda p: p.name)
def test_unit_verifies_cleanly(unit: Path, tmp_path: Path) -> None:
    assert verify(unit.read_text(), unit.name, tmp_path) == []


@pytest.mark.parametrize("unit", units(), ids=lambda p: p.name)
def test_a_typo_in_a_directive_fails(unit: Path, tmp_path: Path) -> None:
    text = unit.read_text()
    assert "\nRestart=" in text
    said = verify(text.replace("\nRestart=", "\nRestrat="), unit.name, tmp_path)
    assert any("Unknown key 'Restrat' in section [Service]" in line for line in said), said


def test_a_missing_script_fails(tmp_path: Path) -> None:
    text = (UNITS / "pcapd.service").read_text().replace("bin/pcapd serve", "bin/pcapdd serve")
    said = verify(text, "pcapd.service", tmp_path)
    assert any("pcapdd is not executable: No such file or directory" in line for line in said)


@pytest.mark.parametrize("unit", units(), ids=lambda p: p.name)
def test_unit_waits_for_liveness_on_the_config_it_starts_with(unit: Path) -> None:
    lines = unit.read_text().splitlines()
    start = next(line for line in lines if line.startswith("ExecStart="))
    post = next(line for line in lines if line.startswith("ExecStartPost="))
    config = start.split(" -c ", 1)[1].split()[0]
    assert f"{INSTALLED_BIN}pcapd health -c {config} " in post
    assert post.endswith(" --live --wait 30 --optional")
    agent = start.split(" agent ", 1)[1].split()[0] if " agent " in start else None
    assert (f" --agent {agent} " in post) if agent else ("--agent" not in post)


@pytest.mark.parametrize("unit", units(), ids=lambda p: p.name)
def test_unit_restarts_on_failure_but_not_on_a_bad_config(unit: Path) -> None:
    """README "Exit status" and docs/operations.md: every unit restarts on 1
    and not on 2 (a bad config or command line: restarting cannot help)."""
    lines = unit.read_text().splitlines()
    assert "Restart=on-failure" in lines
    assert "RestartPreventExitStatus=2" in lines


def test_each_unit_s_documentation_is_a_file_the_readme_installs() -> None:
    """`systemctl help UNIT` opens Documentation=; the README's install step
    copies README.md and docs/*.md to /usr/share/doc/pcapd (pip installs
    no docs)."""
    readme = (ROOT / "README.md").read_text()
    installs = "install -m 0644 -D -t /usr/share/doc/pcapd README.md docs/*.md"
    assert installs in readme
    shipped = {"README.md", *(doc.name for doc in (ROOT / "docs").glob("*.md"))}
    for unit in units():
        docs = [line.split("=", 1)[1] for line in unit.read_text().splitlines()
                if line.startswith("Documentation=")]  # fmt: skip
        assert docs, unit.name
        for url in docs:
            assert url.startswith("file:///usr/share/doc/pcapd/"), (unit.name, url)
            assert url.rsplit("/", 1)[1] in shipped, (unit.name, url)
