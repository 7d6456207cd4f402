"""Code triggers from imports: each rule's `code` param covers exactly its script's quiltflow closure."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from quiltflow.dag.codehash import code_version, module_closure
from workflow_runner import REPO, clone_run, planned_jobs, rules_of

SCRIPTS = sorted((REPO / "workflow" / "scripts").glob("*.py"))
PACKAGE = REPO / "workflow" / "quiltflow"


def dotted(path: Path) -> str:
    """Package-relative module name of a file: core/errors.py -> core.errors, core/__init__.py -> core."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULE_FILES = {dotted(p): p.relative_to(PACKAGE) for p in sorted(PACKAGE.rglob("*.py"))}


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory) -> Path:
    """A scratch copy of workflow/ (scripts + package): the tests edit modules there."""
    root = tmp_path_factory.mktemp("codehash") / "workflow"
    for name in ("scripts", "quiltflow"):
        shutil.copytree(REPO / "workflow" / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.mark.parametrize("script", [s.name for s in SCRIPTS])
def test_comment_in_a_module_changes_exactly_the_rules_that_import_it(package_copy, script):
    package, script_path = package_copy / "quiltflow", package_copy / "scripts" / script
    closure = set(module_closure(script_path, package))
    assert {"", "core", "core.smk"} <= closure  # every script logs through quiltflow.core.smk
    for module, relative in MODULE_FILES.items():
        before = code_version(script_path, package)
        source = package / relative
        original = source.read_bytes()
        source.write_bytes(original + b"\n# an edit\n")
        try:
            changed = code_version(script_path, package) != before
        finally:
            source.write_bytes(original)
        assert changed == (module in closure), f"{script}: editing {relative} changed={changed}"


def test_known_transitive_imports_are_found():
    """Modules the old hand-written lists missed (issue 13) are in the closures now."""
    scripts = REPO / "workflow" / "scripts"
    train = {"models.train", "models.builders", "models.pipeline", "models.features", "core.settings"}
    assert train | {"records.tfrecord_io", "models"} <= set(module_closure(scripts / "train_model.py"))
    evaluate = {"models.builders", "models.pipeline", "models.runtime", "evaluation"}
    assert evaluate <= set(module_closure(scripts / "evaluate_model.py"))
    assert {"models.builders", "models.runtime", "core.settings"} <= set(
        module_closure(scripts / "extract_features.py")
    )
    filters = {"data.lookup", "records.tables", "core.settings", "data.units"}
    assert filters <= set(module_closure(scripts / "filter_metadata.py"))


def test_relative_and_package_imports_resolve(tmp_path):
    package = tmp_path / "quiltflow"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import x\n")
    (package / "b.py").write_text("def f():\n    from quiltflow import c\nx = 1\n")
    (package / "c.py").write_text("import quiltflow.d\n")
    (package / "d.py").write_text("import os\n")
    (package / "unused.py").write_text("")
    (package / "sub").mkdir()
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "e.py").write_text("from ..d import os\n")
    script = tmp_path / "s.py"
    script.write_text("from quiltflow.a import x\nfrom quiltflow.sub import e\n")
    # A subpackage's __init__ is part of the closure: Python runs it before its modules.
    assert module_closure(script, package) == ["", "a", "b", "c", "d", "sub", "sub.e"]


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train_model.py", "filter_metadata.py", "compare_models.py"])
def test_closure_covers_what_python_actually_imports(script):
    """Cross-check against the interpreter: import the script's quiltflow imports, list sys.modules."""
    source = (REPO / "workflow" / "scripts" / script).read_text()
    imports = "\n".join(line for line in source.splitlines() if re.match(r"^from quiltflow\.[\w.]+ import", line))
    code = (
        f"import sys\nsys.path.insert(0, {str(REPO / 'workflow')!r})\n{imports}\n"
        "print(sorted(m.split('.', 1)[1] for m in sys.modules if m.startswith('quiltflow.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    loaded = set(eval(out.stdout.strip().splitlines()[-1]))
    assert loaded and loaded <= set(module_closure(REPO / "workflow" / "scripts" / script))


def test_every_rule_hashes_its_own_script():
    """A rule's code param names the same script as its `script:` directive."""
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for block in re.split(r"(?m)^\s*(?:rule|checkpoint) ", smk.read_text())[1:]:
            script = re.search(r'script:\s*"\.\./scripts/(\w+\.py)"', block)
            if script:
                assert f'code=script_code("{script.group(1)}")' in block, f"{smk.name}: {block.split(':')[0]}"


@pytest.mark.e2e
def test_editing_the_reader_reruns_training_not_data_stages(finished_run, tmp_path):
    workdir = clone_run(finished_run, tmp_path / "run")
    with open(workdir / "workflow/quiltflow/models/pipeline.py", "a") as fh:
        fh.write("\n# an edit of the tf.data reader\n")
    planned = rules_of(planned_jobs(workdir))
    assert {"train_model", "extract_features", "evaluate_model", "compare_models"} <= planned
    assert not planned & {
        "generate_demo_data",
        "filter_metadata",
        "split_manifests",
        "plan_shards",
        "shard_tfrecords",
        "index_tfrecords",
    }
    jobs = planned_jobs(workdir)
    assert sum(j.startswith("train_model") for j in jobs) == 3
    assert sum(j.startswith("evaluate_model") for j in jobs) == 3


@pytest.mark.e2e
def test_editing_the_record_format_reruns_shards_and_everything_after(finished_run, tmp_path):
    """tfrecord_io holds the writer too: the shards depend on it, so they rerun, and no earlier stage
    (the shard plan reads only the manifests' Parquet footers: quiltflow.dag.shard_plan)."""
    workdir = clone_run(finished_run, tmp_path / "run")
    with open(workdir / "workflow/quiltflow/records/tfrecord_io.py", "a") as fh:
        fh.write("\n# an edit of the record format\n")
    planned = rules_of(planned_jobs(workdir))
    assert {"shard_tfrecords", "index_tfrecords", "train_model", "extract_features", "evaluate_model"} <= planned
    assert not planned & {"generate_demo_data", "filter_metadata", "split_manifests", "plan_shards"}
