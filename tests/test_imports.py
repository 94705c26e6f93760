"""Every module imports on its own in a fresh interpreter, and the lower layers stay light."""

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import deeplab

MODULES = sorted(m.name for m in pkgutil.walk_packages(deeplab.__path__, "deeplab."))


def _fresh(code: str, *args: str) -> str:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True).stdout


# One interpreter imports each of our modules as if it were the first: before each import every deeplab
# module is dropped from sys.modules, so our package starts fresh (a circular import among our modules
# fails exactly as in a new process) while torch & co., which cannot take part in such a cycle, load once
# rather than 65 times (5 s each). It also records which of the dataset and engine modules each import pulled in.
_IMPORT_EACH = """
import importlib, json, sys, traceback
errors, pulled = {}, {}
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m == "deeplab" or m.startswith("deeplab.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except BaseException:
        errors[name] = traceback.format_exc()
    else:  # only for a module that imported: a failed one has no entry, so a check of it cannot pass
        pulled[name] = sorted(m for m in sys.modules if m.startswith(("deeplab.data", "deeplab.engine")))
print(json.dumps([errors, pulled]))
"""


@pytest.fixture(scope="module")
def fresh_imports() -> tuple[dict[str, str], dict[str, list[str]]]:
    """(the traceback of each module that fails to import, the dataset and engine modules each other one pulls
    in)."""
    return json.loads(_fresh(_IMPORT_EACH, json.dumps(["deeplab", *MODULES])).splitlines()[-1])


@pytest.fixture(scope="module")
def import_errors(fresh_imports) -> dict[str, str]:
    return fresh_imports[0]


@pytest.fixture(scope="module")
def pulled_in(fresh_imports) -> dict[str, list[str]]:
    return fresh_imports[1]


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_in_a_fresh_interpreter(module, import_errors):
    assert module not in import_errors, import_errors.get(module)


def test_a_circular_import_is_caught(tmp_path):
    """The check above sees an import cycle among our modules (the kind it exists for)."""
    package = tmp_path / "deeplab"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from deeplab.b import B\nA = 1\n")
    (package / "b.py").write_text("from deeplab.a import A\nB = 2\n")
    result = subprocess.run([sys.executable, "-c", _IMPORT_EACH, json.dumps(["deeplab.b", "deeplab.a"])],
                            capture_output=True, text=True, check=True, cwd=tmp_path,
                            env={"PYTHONPATH": str(tmp_path), "PATH": ""})
    errors, pulled = json.loads(result.stdout.splitlines()[-1])
    assert set(errors) == {"deeplab.a", "deeplab.b"} and "circular import" in errors["deeplab.a"]
    assert pulled == {}  # a module that failed has no record, so no check of what it pulls in passes by default


LOW_LAYERS = ["deeplab.constants", "deeplab.palettes", "deeplab.imageio", "deeplab.metrics", "deeplab.losses",
              "deeplab.inference"]
@pytest.mark.parametrize("module", LOW_LAYERS)
def test_low_layers_do_not_pull_in_the_dataset_package_or_the_engine(module, pulled_in):
    assert pulled_in[module] == []


def test_the_low_layer_check_sees_what_a_module_pulls_in(pulled_in):
    assert "deeplab.data.demo" in pulled_in["deeplab.deploy.export"]  # a higher layer, which does pull them in


def test_importing_the_package_does_not_import_the_training_stack(pulled_in):
    """``import deeplab`` (the model API) loads neither the training loop nor the datasets."""
    assert "deeplab.engine.train" not in pulled_in["deeplab"] and "deeplab.data.demo" not in pulled_in["deeplab"]


def test_the_app_does_not_depend_on_how_the_predictor_is_built(pulled_in):
    """create_app takes any predictor: importing it pulls in neither the training engine nor the datasets."""
    assert pulled_in["deeplab.serve.app"] == []


def test_constants_import_nothing_of_ours():
    import ast

    tree = ast.parse(Path(deeplab.__file__).with_name("constants.py").read_text())
    imports = [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]
    assert imports, "the test must see the module's imports"
    for node in imports:
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        assert getattr(node, "level", 0) == 0 and not any(n.startswith("deeplab") for n in names), ast.dump(node)


def _lint_copy(tmp_path: Path, module: str = "", added: str = "") -> subprocess.CompletedProcess:
    """`lint-imports` on a copy of the package, with ``added`` appended to ``deeplab/<module>`` if given."""
    import shutil

    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed (it comes with the dev extra: pip install -e '.[dev]')")
    repo = Path(deeplab.__file__).parents[1]
    if not (tmp_path / "deeplab").exists():
        shutil.copytree(repo / "deeplab", tmp_path / "deeplab", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(repo / "pyproject.toml", tmp_path)
    if added:
        with open(tmp_path / "deeplab" / module, "a") as handle:
            handle.write(added)
    return subprocess.run([str(lint), "--no-cache"], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(tmp_path), "PATH": ""})


def test_the_layer_contract_holds_and_catches_an_upward_import_inside_a_function(tmp_path):
    """`lint-imports` (run by `make test`) passes on the package, and fails once a model module imports the
    engine from inside a function, the kind of arrow a module-level check cannot see."""
    clean = _lint_copy(tmp_path)
    assert clean.returncode == 0, clean.stdout
    sneaky = "\n\ndef _sneaky():\n    from deeplab.engine import train  # noqa: F401\n"
    broken = _lint_copy(tmp_path, "models/layers.py", sneaky)
    assert broken.returncode == 1 and "deeplab.models is not allowed to import deeplab.engine" in broken.stdout


def test_the_models_package_is_layered_and_a_circle_through_a_function_breaks_the_contract(tmp_path):
    """Inside deeplab.models the builder registry (zoo) sits below the weights sources (published names, the TF
    zoo, timm's weights): an import of them from inside one of zoo's functions, the hidden circle this package
    used to have, fails `lint-imports`."""
    circle = "\n\ndef _circle():\n    from .tf_hub import load_tf_backbone  # noqa: F401\n"
    result = _lint_copy(tmp_path, "models/zoo.py", circle)
    assert result.returncode == 1 and "deeplab.models.zoo is not allowed to import deeplab.models.tf_hub" in \
        result.stdout, result.stdout
    assert "imports point down the layers KEPT" in result.stdout  # only the models contract broke
