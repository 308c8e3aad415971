"""The package's shape: dvc.yaml deps equal each stage's imports, the resume fingerprint hashes only
the train stage's code, components never reach into orchestration, and a stage imports its own checkout."""

import ast
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY_PARAMS, make_project, run

from language_entropy.pipeline.deps import stage_files
from language_entropy.pipeline.train import run_fingerprint

FORBIDDEN_IN_COMPONENTS = ("mlflow", "language_entropy.pipeline", "torch.distributed.run", "torch.distributed.launch")


def declared_code_deps(stage: dict) -> set[str]:
    return {dep for dep in stage["deps"] if dep.endswith(".py")}


def stage_script(stage: dict) -> str:
    return next(word for word in stage["cmd"].split() if word.endswith(".py"))


def test_every_stage_declares_exactly_the_code_it_imports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        imported = {str(path) for path in stage_files(stage_script(stage))}
        declared = declared_code_deps(stage)
        assert imported == declared, (f"dvc.yaml stage {name}: missing {sorted(imported - declared)}, "
                                      f"not imported {sorted(declared - imported)}")


def test_the_deps_check_fails_when_a_stage_gains_an_import(tmp_path):
    for name in ("stages", "language_entropy"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    before = {str(path) for path in stage_files("stages/train.py", tmp_path)}
    training = tmp_path / "language_entropy" / "training.py"
    training.write_text(training.read_text() + "\n\ndef _late():\n    from language_entropy import plots  # noqa\n")
    after = {str(path) for path in stage_files("stages/train.py", tmp_path)}
    assert after - before == {"language_entropy/plots.py"}  # a lazy import inside a function counts too


def test_training_runs_no_evaluation_theory_uncertainty_or_plotting_code():
    train = {str(path) for path in stage_files("stages/train.py")}
    for module in ("evaluation.py", "uncertainty.py", "plots.py", "report.py", "theory/__init__.py"):
        assert f"language_entropy/{module}" not in train


def component_modules(root: Path) -> list[Path]:
    """Every module of the package outside `pipeline/`, found by walking it (no hand-kept list)."""
    package = root / "language_entropy"
    return sorted(path for path in package.rglob("*.py") if "pipeline" not in path.relative_to(package).parts)


def orchestration_imports(root: Path) -> list[str]:
    """`file: module` for every import, direct or through the package's own modules (dvc.yaml's dependency walk),
    by which a component reaches MLflow, the pipeline or torch's launchers."""
    found = []
    for path in component_modules(root):
        reached = [path, *(root / dep for dep in stage_files(path.relative_to(root), root))]
        for module_file in reached:
            for node in ast.walk(ast.parse(module_file.read_text())):
                names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
                for name in names:
                    if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN_IN_COMPONENTS):
                        found.append(f"{path.relative_to(root)}: {name} (in {module_file.relative_to(root)})")
    return found


def test_components_never_import_mlflow_or_the_pipeline():
    assert len(component_modules(ROOT)) >= 20  # the walk sees the whole package, theory/ included
    assert orchestration_imports(ROOT) == []


@pytest.mark.parametrize("line, reported", [
    ("import mlflow", "mlflow"),
    ("from language_entropy.pipeline.tracking import connect", "language_entropy.pipeline.tracking"),
    ("from mlflow.tracking import MlflowClient", "mlflow.tracking"),
])
def test_the_structure_check_fails_on_an_orchestration_import_in_a_component(tmp_path, line, reported):
    for name in ("stages", "language_entropy"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    uncertainty = tmp_path / "language_entropy" / "uncertainty.py"
    uncertainty.write_text(uncertainty.read_text() + f"\n\ndef _late():\n    {line}  # noqa\n")
    found = orchestration_imports(tmp_path)
    assert f"language_entropy/uncertainty.py: {reported} (in language_entropy/uncertainty.py)" in found
    # a component importing it (evaluation imports uncertainty) is caught through it
    assert f"language_entropy/evaluation.py: {reported} (in language_entropy/uncertainty.py)" in found


def test_resume_fingerprint_hashes_only_the_train_stage_code(tmp_path):
    for name in ("stages", "language_entropy"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    data = tmp_path / "train.parquet"
    data.write_bytes(b"rows")

    def fingerprint() -> str:
        return run_fingerprint({"seed": 0}, [data], None, root=tmp_path)

    original = fingerprint()
    for untouched in ("plots.py", "evaluation.py", "uncertainty.py", "theory/table.py", "report.py"):
        path = tmp_path / "language_entropy" / untouched
        path.write_text(path.read_text() + "\n# an edit that cannot change the weights\n")
    assert fingerprint() == original
    losses = tmp_path / "language_entropy" / "losses.py"
    losses.write_text(losses.read_text() + "\n# an edit to training code\n")
    assert fingerprint() != original


def test_a_stage_imports_the_package_of_its_own_checkout(tmp_path):
    """Queued DVC experiments run in a copy of the repository: the copy's stages must run the copy's code,
    even when another checkout's package is importable (PYTHONPATH, an installed package)."""
    copy = tmp_path / "copy"
    for name in ("stages", "language_entropy"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    marker = copy / "language_entropy" / "params.py"
    marker.write_text(marker.read_text() + "\nprint('imported from', __file__)\n")
    done = subprocess.run([sys.executable, str(copy / "stages" / "generate_data.py"), "--help"], cwd=tmp_path,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"imported from {copy / 'language_entropy' / 'params.py'}" in done.stdout


@pytest.mark.slow
def test_editing_evaluation_code_leaves_train_up_to_date(tmp_path):
    project = make_project(tmp_path / "project", TINY_PARAMS)
    run(["dvc", "repro", "--quiet"], project)
    for module in ("evaluation.py", "uncertainty.py"):
        path = project / "language_entropy" / module
        path.write_text(path.read_text() + "\n# an edit to the measurements\n")
    status = run(["dvc", "status", "--json"], project).stdout
    changed = set(yaml.safe_load(status))
    assert "train" not in changed and "generate-data" not in changed
    assert "evaluate" in changed


def test_run_returns_when_the_command_ends_although_a_background_child_holds_its_output(tmp_path):
    # what `dvc exp run --run-all` does when one of its queue workers misses the shutdown: the command exits,
    # a detached child lives on with the same stdout. Waiting for the end of a pipe would hit the timeout.
    done = run(["sh", "-c", "sleep 60 & echo $!; echo started"], tmp_path, timeout=20)
    child = int(done.stdout.split()[0])
    os.kill(child, signal.SIGTERM)
    assert done.stdout.split()[1] == "started"
