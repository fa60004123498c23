"""What a plain (non-editable) install carries: the default model and the SQL files, quietly.

The deployments import the flows from the installed package, and the store reads its schema
from it, so a wheel that lacked sql/ or the model would crash every run.
"""

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_carries_the_default_model_and_the_sql_and_builds_without_warnings(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir", "-w",
         str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert build.returncode == 0, build.stdout + build.stderr
    output = build.stdout + build.stderr
    assert "absent from the `packages` configuration" not in output, output  # the page make demo printed
    [wheel] = tmp_path.glob("span_jobs-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for sql in (REPO / "sql").glob("*.sql"):
        assert f"span_jobs/sql/{sql.name}" in names
    for model_file in (REPO / "span_jobs" / "default_model").iterdir():
        assert f"span_jobs/default_model/{model_file.name}" in names
    assert "flows/extract_spans.py" in names  # the deployments' module-path entrypoints


def test_the_library_never_imports_prefect_or_the_flows():
    """span_jobs is the library; flows/ is the only place Prefect enters (the issue: cli demo and
    labeled-arrived used to import the flows)."""
    import pkgutil

    import span_jobs

    modules = [f"span_jobs.{m.name}" for m in pkgutil.iter_modules(span_jobs.__path__)]
    script = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules) + (
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'flows'))\n"
        "assert not leaked, leaked\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "span_jobs.cli" in modules and "span_jobs.pipeline" in modules


def test_model_names_resolve_in_one_place_and_model_knows_nothing_of_the_registry():
    """No model <-> registry cycle: model.py loads directories; registry.py turns names into them."""
    source = (REPO / "span_jobs" / "model.py").read_text()
    assert "registry" not in source.lower()
    done = subprocess.run([sys.executable, "-c", "import sys, span_jobs.model; assert 'span_jobs.registry' not in "
                           "sys.modules"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
