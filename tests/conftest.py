"""Test harness. Tests may be `async def`; they run on one event loop for the session, with one GPU device
(`device` fixture). Kernel tests marked `pyodide` also run inside Pyodide with WebGPU (tests/pyodide_runner.py
runs the same functions there with the same `device` argument)."""

import asyncio
import inspect
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/reference.py and friends
os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")  # Mesa's Vulkan loader warns loudly without it

_loop = asyncio.new_event_loop()


def run(coro):
    return _loop.run_until_complete(coro)


def require(missing: str | None, what: str) -> None:
    """Skip when something the tests need (set up by tools/setup.sh) is `missing`; under CI, fail instead,
    so that a broken setup can never pass as skipped tests."""
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"cannot run {what}: {missing}")
        pytest.skip(missing)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    if inspect.iscoroutinefunction(pyfuncitem.obj):
        args = {k: pyfuncitem.funcargs[k] for k in pyfuncitem._fixtureinfo.argnames}
        run(pyfuncitem.obj(**args))
        return True
    return None


@pytest.fixture(scope="session")
def device():
    from rullama_py import gpu

    return run(gpu.default_device())


@pytest.fixture(scope="session")
def device_fallback():
    """A device with shader-f16 and subgroups off, to test the fallback kernel variants."""
    from rullama_py import gpu

    return run(gpu.fallback_device())
