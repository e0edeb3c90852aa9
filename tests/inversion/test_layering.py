"""ARCHITECTURE.md's layering: inversion/ never imports models/ (it takes pure callables)."""

import subprocess
import sys


def test_inversion_does_not_import_models():
    code = (
        "import sys, inversion, inversion.analysis; "
        "bad = sorted(m for m in sys.modules if m == 'models' or m.startswith('models.')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, f"inversion imported models: {done.stdout} {done.stderr}"
