"""The official AsyncAPI parser (npm ``@asyncapi/parser``), run by node on a document.

Installed on first use into a cache directory (``NEXUS_ASYNCAPI_PARSER_DIR``, else
``~/.cache/nexus/asyncapi-parser-<version>``); a test skips, naming why, only when node or npm
is missing or npm cannot install the package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

VERSION = "3.6.6"
"""The parser version the document is checked with (pinned: a new rule is a deliberate update)."""

_SCRIPT = """
const fs = require('fs');
const { Parser } = require('@asyncapi/parser');
(async () => {
  const { document, diagnostics } = await new Parser().parse(fs.readFileSync(process.argv[2], 'utf8'));
  process.stdout.write(JSON.stringify({
    parsed: document !== undefined,
    diagnostics: diagnostics.map(d => ({
      code: d.code, severity: d.severity, message: d.message, path: d.path.join('/'),
    })),
  }));
})().catch(e => { console.error(e); process.exit(2); });
"""

SEVERITIES = {0: "error", 1: "warning", 2: "information", 3: "hint"}


def parser_dir() -> Path:
    """The directory holding node_modules/@asyncapi/parser and the script; installs it when missing."""
    base = os.environ.get("NEXUS_ASYNCAPI_PARSER_DIR")
    target = Path(base) if base else Path.home() / ".cache" / "nexus" / f"asyncapi-parser-{VERSION}"
    if (target / "node_modules" / "@asyncapi" / "parser" / "package.json").exists():
        (target / "validate.js").write_text(_SCRIPT)
        return target
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("the AsyncAPI parser needs node and npm on PATH (neither is a Python dependency)")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Installed beside the target and renamed into place: a concurrent run never sees half of it.
    staging = Path(tempfile.mkdtemp(prefix=".asyncapi-parser-", dir=target.parent))
    try:
        install = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(staging), f"@asyncapi/parser@{VERSION}"],
            capture_output=True,
            text=True,
            timeout=100,
        )
    except subprocess.TimeoutExpired:
        shutil.rmtree(staging, ignore_errors=True)
        pytest.skip(f"npm could not install @asyncapi/parser@{VERSION} within 100 s (registry unreachable?)")
    if install.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        pytest.skip(f"npm could not install @asyncapi/parser@{VERSION}: {install.stderr.strip()[-500:]}")
    try:
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another run installed it first
    (target / "validate.js").write_text(_SCRIPT)
    return target


def parse(document: Path) -> dict[str, Any]:
    """``{"parsed": bool, "diagnostics": [{code, severity, message, path}]}`` for ``document``."""
    directory = parser_dir()
    run = subprocess.run(
        ["node", str(directory / "validate.js"), str(document.resolve())],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, f"the AsyncAPI parser failed to run: {run.stderr[-2000:]}"
    result: dict[str, Any] = json.loads(run.stdout)
    return result


def problems(result: dict[str, Any]) -> list[str]:
    """The errors and warnings, one line each."""
    return [
        f"{SEVERITIES[d['severity']]} {d['code']} at {d['path'] or '/'}: {d['message']}"
        for d in result["diagnostics"]
        if d["severity"] <= 1
    ]
