"""The library's layers point one way (import-linter's contract in pyproject.toml), and reading the
parameter schemas imports no torch (so `advbook --help` and `advbook params` start fast)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contract_keeps_the_layers():
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Contracts: 1 kept, 0 broken" in out.stdout


def test_a_wrong_way_import_breaks_the_contract(tmp_path):
    """The check can fail: a copy of the package where core imports the book layer is refused."""
    import shutil
    pkg = tmp_path / "advbook"
    shutil.copytree(ROOT / "lib" / "advbook", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "core" / "wrong.py").write_text("from advbook.book import report\n")
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(tmp_path), "PATH": ""})
    assert out.returncode != 0 and "advbook.core.wrong -> advbook.book.report" in out.stdout, out.stdout + out.stderr


def test_schemas_import_no_torch():
    code = "import sys, advbook.book.schemas; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
