"""Raw and the proof manifests take a clock, metrics and a tracer from nexus.hooks, not the Atlas."""

from __future__ import annotations

import subprocess
import sys


def _loaded_after_import(module: str) -> set[str]:
    # A fresh interpreter: the test process has long imported everything.
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(out.split())


def test_raw_and_proof_do_not_import_the_atlas() -> None:
    for module in ("nexus.raw", "nexus.proof"):
        loaded = _loaded_after_import(module)
        assert "nexus.hooks" in loaded, module
        assert not {m for m in loaded if m.startswith("nexus.atlas")}, f"{module} imports the Atlas"


def test_the_atlas_reexports_the_same_hooks() -> None:
    import nexus.atlas
    import nexus.hooks

    for name in nexus.hooks.__all__:
        assert getattr(nexus.atlas, name) is getattr(nexus.hooks, name)
