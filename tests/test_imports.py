"""Every module imports on its own in a fresh interpreter, and the lower layers stay light."""

import pkgutil
import subprocess
import sys

import pytest

import deeplab

MODULES = sorted(m.name for m in pkgutil.walk_packages(deeplab.__path__, "deeplab."))


def _fresh(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_in_a_fresh_interpreter(module):
    result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("module", ["deeplab.constants", "deeplab.palettes", "deeplab.imageio", "deeplab.metrics",
                                    "deeplab.losses", "deeplab.inference"])
def test_low_layers_do_not_pull_in_the_dataset_package_or_the_engine(module):
    code = (f"import sys, {module}; "
            "print(sorted(m for m in sys.modules if m.startswith(('deeplab.data', 'deeplab.engine'))))")
    assert _fresh(code).strip() == "[]"


def test_constants_import_nothing_of_ours():
    import ast
    from pathlib import Path

    tree = ast.parse(Path(deeplab.__file__).with_name("constants.py").read_text())
    imports = [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]
    assert imports, "the test must see the module's imports"
    for node in imports:
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        assert getattr(node, "level", 0) == 0 and not any(n.startswith("deeplab") for n in names), ast.dump(node)
