"""Guard: the project's `constructs/` folder must merge into the PyPI `constructs` package.

The installed package calls `pkgutil.extend_path`, so with no `constructs/__init__.py` the project
folder joins its `__path__`. An `__init__.py` (or a module named `_jsii`) would shadow the library
and break every CDK import.
"""

from pathlib import Path

import constructs

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def test_project_folder_has_no_init_file():
    assert not (PROJECT_ROOT / "constructs" / "__init__.py").exists()


def test_project_folder_has_no_jsii_module():
    assert not list((PROJECT_ROOT / "constructs").glob("_jsii*"))


def test_library_construct_class_still_resolves():
    from constructs import Construct

    assert Construct.__module__.startswith("constructs")
    assert Path(constructs.__file__).resolve().parent != PROJECT_ROOT / "constructs"


def test_project_folder_is_merged_into_the_package_path():
    paths = [Path(p).resolve() for p in constructs.__path__]
    assert PROJECT_ROOT / "constructs" in paths
