"""Fixtures of the deployment tests: Prometheus's ``promtool``, installed where it is missing.

promtool comes with Debian's ``prometheus`` package. Where it is missing and the set-up may
install packages (root with apt-get, as CI), it runs ``apt-get install -y --no-install-recommends
prometheus`` and says so on stderr; elsewhere the tests that need it are skipped with the reason.

Installing the package must not leave a Prometheus server running: Debian's maintainer scripts
start services through ``invoke-rc.d``/``deb-systemd-invoke``, which ask ``/usr/sbin/policy-rc.d``
first. Where that file is missing the set-up writes one that forbids every start (exit 101)
for the duration of the install, then removes it; afterwards it checks that no process runs the
installed ``prometheus`` binary (and stops the ``prometheus`` unit through systemd if one does).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

POLICY = Path("/usr/sbin/policy-rc.d")
PACKAGE = "prometheus"


def _prometheus_processes() -> list[int]:
    """Process ids whose executable is Debian's ``/usr/bin/prometheus``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "exe") == "/usr/bin/prometheus":
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def install_promtool() -> str | None:
    """Install Debian's prometheus package where the set-up may; promtool's path or None."""
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    print(f"deploy tests: installing Debian's {PACKAGE} package for promtool (apt-get install)", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=300", PACKAGE]
    wrote_policy = False
    if not POLICY.exists():
        # No service may start while the package installs (101: action forbidden).
        POLICY.write_text("#!/bin/sh\n# Written by the Nexus test set-up while it installs promtool.\nexit 101\n")
        POLICY.chmod(0o755)
        wrote_policy = True
    try:
        if subprocess.run(command, env=env, capture_output=True, timeout=900).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
            subprocess.run(command, env=env, capture_output=True, timeout=900)
    finally:
        if wrote_policy:
            POLICY.unlink(missing_ok=True)
    if _prometheus_processes() and Path("/run/systemd/system").exists():
        subprocess.run(["systemctl", "stop", PACKAGE], capture_output=True, timeout=60)
        subprocess.run(["systemctl", "disable", PACKAGE], capture_output=True, timeout=60)
    running = _prometheus_processes()
    assert not running, f"installing {PACKAGE} left a Prometheus server running (pids {running}); stop it"
    return shutil.which("promtool")


@pytest.fixture(scope="session")
def promtool() -> str:
    """The path of promtool (installed if missing and allowed), else the test is skipped."""
    found = shutil.which("promtool") or install_promtool()
    if found is None:
        pytest.skip(
            "promtool is missing and cannot be installed here (needs root and apt-get: "
            f"apt-get install --no-install-recommends {PACKAGE})"
        )
    return found


@pytest.fixture(scope="session")
def prometheus_server(promtool: str) -> str:
    """The path of the Prometheus server of the same package (run by a test, on a free port)."""
    found = shutil.which("prometheus") or str(Path(promtool).with_name("prometheus"))
    if not Path(found).exists():
        pytest.skip(f"the {PACKAGE} package's server binary is missing beside {promtool}")
    return found
