"""Every module is importable by its dotted path, and the public functions by their names (none shadows a module)."""

import importlib
import pkgutil
import types

import fama_core


def test_every_module_importable_by_path() -> None:
    names = [m.name for m in pkgutil.walk_packages(fama_core.__path__, "fama_core.")]
    assert {"fama_core.pipeline", "fama_core.evaluation", "fama_core.training.trainer"} <= set(names)
    for name in names:
        module = importlib.import_module(name)
        assert isinstance(module, types.ModuleType) and module.__name__ == name


def test_public_functions_do_not_shadow_modules() -> None:
    for name in ("transcribe", "translate", "evaluate", "train", "average", "load_model"):
        assert callable(getattr(fama_core, name)) and not isinstance(getattr(fama_core, name), types.ModuleType)
    import fama_core.training.trainer as trainer

    assert trainer.train is fama_core.train
