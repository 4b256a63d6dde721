"""Loading a user's own code named in the config: recipes, rewards, envs, scorers.

One syntax for every plug-in key: ``package.module.function``, ``package.module:function``
or a file ``path/to/file.py[:function]`` (``default_name`` when the function is left
out). Modules are found from the working directory first, the way ``python -m`` finds
them, then ``PYTHONPATH``. Every failure is one :class:`~loops_runner.errors.ConfigError`
line: the config key, the value, and the reason (which module or file was not found and
where it was looked for, the function that is missing, the call it cannot take), never a
traceback or a dump of the config around it.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from loops_runner.errors import ConfigError


def _fail(field: str, target: str, reason: str) -> ConfigError:
    return ConfigError(f"{field}={target!r}: {reason}")


def _import_failure(error: BaseException) -> str:
    where = ""
    if isinstance(error, SyntaxError) and error.filename:
        where = f" ({error.filename}, line {error.lineno})"
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}{where}"


def _load_file_module(path: Path, field: str, target: str) -> ModuleType:
    if not path.is_file():
        raise _fail(field, target, f"file {str(path)!r} does not exist")
    name = f"loops_user_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise _fail(field, target, f"cannot import file {str(path)!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        sys.modules.pop(name, None)
        raise _fail(field, target, f"importing {str(path)!r} failed: "
                    f"{_import_failure(error)}") from None
    return module


def _import_module(name: str, field: str, target: str) -> ModuleType:
    # The user's working directory holds their code: make it importable the way
    # `python -m` would, also when launched through a console script.
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if missing == name or name.startswith(f"{missing}."):
            raise _fail(field, target, f"no module named {missing!r} in the working "
                        f"directory ({cwd}) or on PYTHONPATH") from None
        raise _fail(field, target, f"importing {name!r} failed: {_import_failure(error)}"
                    ) from None
    except Exception as error:
        raise _fail(field, target, f"importing {name!r} failed: {_import_failure(error)}"
                    ) from None


def split_target(target: str, default_name: str) -> tuple[str, str]:
    """``(module or file, function)`` of a plug-in value."""
    if ":" in target:
        module_part, function_name = target.rsplit(":", 1)
    elif target.endswith(".py"):
        module_part, function_name = target, default_name
    else:
        module_part, _, function_name = target.rpartition(".")
    return module_part, function_name


def load_callable(target: str, field: str, default_name: str,
                  *, call: Sequence[str] | None = None) -> tuple[ModuleType, Callable[..., Any]]:
    """Resolve ``target`` to its module and function; errors name ``field``.

    ``call`` names the positional arguments the function will be called with; a
    function that cannot take them is refused here rather than at the first call.
    """
    if not target:
        raise ConfigError(f"{field} is empty; it names a function (module:function or "
                          "path/to/file.py:function)")
    module_part, function_name = split_target(target, default_name)
    if not module_part or not function_name:
        raise _fail(field, target, "expected module:function, module.function or "
                    "path/to/file.py:function")
    if module_part.endswith(".py") or "/" in module_part:
        module = _load_file_module(Path(module_part).expanduser().resolve(), field, target)
    else:
        module = _import_module(module_part, field, target)
    function = getattr(module, function_name, None)
    if function is None:
        found = sorted(n for n, v in vars(module).items()
                       if callable(v) and not n.startswith("_")
                       and getattr(v, "__module__", None) == module.__name__)
        has = f"; it defines: {', '.join(found)}" if found else ""
        raise _fail(field, target, f"{module_part} has no {function_name!r}{has}")
    if not callable(function):
        raise _fail(field, target, f"{module_part}.{function_name} is not callable")
    if call is not None:
        check_signature(function, call, field, target)
    return module, function


def check_signature(function: Callable[..., Any], args: Sequence[str], field: str,
                    target: str, /, **kwargs: Any) -> None:
    """Refuse a function that cannot be called with positional ``args`` (and ``kwargs``)."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as error:
        shown = ", ".join([*args, *(f"{k}=..." for k in kwargs)])
        raise _fail(field, target, f"{getattr(function, '__name__', 'it')}{signature} cannot "
                    f"be called as ({shown}): {error}") from None
