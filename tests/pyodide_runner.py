"""Runs the `pyodide`-marked tests inside Pyodide, and lists them natively under the same ids.

Pytest itself cannot drive async tests inside Pyodide (there is no blocking event loop there), so this small
collector does what we need of it: import test modules, keep the functions marked `pyodide` (module
`pytestmark` or decorator) but not `native_only` (a function or a pytest.param case too heavy for the Pyodide
run, whose kernels and variants lighter cases already test there), expand `pytest.mark.parametrize`, supply the
session fixtures by name, and await each test. tests/test_in_pyodide.py runs it once in Pyodide
(tests/pyodide_node.mjs) and reports one native pytest result per test id, so the output shows every kernel
test run natively and in Pyodide.
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import sys
import time
import traceback
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _marks(obj):
    marks = getattr(obj, "pytestmark", [])
    return marks if isinstance(marks, list) else [marks]


def _id(value, argname: str, i: int) -> str:
    if isinstance(value, (int, float, str, bool)) or value is None:
        return str(value)
    return f"{argname}{i}"


def _expand(fn):
    """(id suffix, kwargs) for each parametrisation of `fn` (stacked parametrize marks multiply)."""
    axes = []
    for m in _marks(fn):
        if m.name != "parametrize":
            continue
        names, values = m.args[0], m.args[1]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        ids = m.kwargs.get("ids")
        cases = []
        for i, v in enumerate(values):
            if hasattr(v, "values") and hasattr(v, "marks"):  # pytest.param(...)
                if any(m.name == "native_only" for m in v.marks):
                    continue
                v = v.values if len(names) > 1 else v.values[0]
            vals = v if len(names) > 1 else (v,)
            label = ids[i] if ids else "-".join(_id(x, n, i) for x, n in zip(vals, names))
            cases.append((label, dict(zip(names, vals))))
        axes.append(cases)
    if not axes:
        yield "", {}
        return
    for combo in itertools.product(*reversed(axes)):
        yield "[" + "-".join(c[0] for c in combo) + "]", {k: v for c in combo for k, v in c[1].items()}


def _load(path: Path):
    name = "pyodide_tests." + path.stem
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


# Test modules outside tests/kernels whose pyodide-marked tests also run in Pyodide.
MODULES = ("test_media.py", "test_audio_media.py", "test_g2p.py", "test_voice_target.py")


def test_files(root: Path = HERE) -> list[Path]:
    return sorted((root / "kernels").glob("test_*.py")) + [root / m for m in MODULES]


def collect(root: Path = HERE):
    """[(test id, function, kwargs)] for every pyodide-marked test under root/kernels and in MODULES."""
    out = []
    for path in test_files(root):
        mod = _load(path)
        module_marked = any(m.name == "pyodide" for m in _marks(mod))
        for name, fn in inspect.getmembers(mod, inspect.isfunction):
            if not name.startswith("test_") or fn.__module__ != mod.__name__:
                continue
            if not (module_marked or any(m.name == "pyodide" for m in _marks(fn))):
                continue
            if any(m.name == "native_only" for m in _marks(fn)):
                continue
            for suffix, kwargs in _expand(fn):
                out.append((f"{path.relative_to(root).as_posix()}::{name}{suffix}", fn, kwargs))
    return out


async def run(fixtures: dict, root: Path = HERE, only=None) -> dict:
    """Run every collected test; {id: {"outcome": passed|failed|skipped, "message": str, "seconds": float}}."""
    results = {}
    for test_id, fn, kwargs in collect(root):
        if only and test_id not in only:
            continue
        args = dict(kwargs)
        mp = pytest.MonkeyPatch()
        t0 = time.perf_counter()
        try:
            for p in inspect.signature(fn).parameters:
                if p == "monkeypatch":
                    args[p] = mp
                elif p not in args:
                    if p not in fixtures:
                        raise LookupError(f"fixture {p!r} is not available in Pyodide")
                    f = fixtures[p]
                    args[p] = (await f()) if inspect.iscoroutinefunction(f) else f
            r = fn(**args)
            if inspect.isawaitable(r):
                await r
            outcome, message = "passed", ""
        except pytest.skip.Exception as e:
            outcome, message = "skipped", str(e)
        except BaseException as e:  # noqa: BLE001 - report every failure, keep going
            outcome, message = "failed", "".join(traceback.format_exception(e))[-4000:]
        finally:
            mp.undo()
        results[test_id] = {"outcome": outcome, "message": message, "seconds": round(time.perf_counter() - t0, 3)}
        print(f"pyodide: {test_id} {outcome.upper()} ({results[test_id]['seconds']} s)", flush=True)
    return results
