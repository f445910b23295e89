"""gunicorn worker classes that serve on fastloop.

    gunicorn -k fastloop.workers.UvicornWorker app:app      # an ASGI app, served by uvicorn
    gunicorn -k fastloop.workers.AiohttpWorker app:make_app  # an aiohttp web application

Each is the worker its server ships for asyncio (``uvicorn_worker.UvicornWorker``,
or uvicorn's own ``uvicorn.workers.UvicornWorker`` where the ``uvicorn-worker``
package is not installed; ``aiohttp.worker.GunicornWebWorker``) with fastloop as
the loop of the worker process. Importing this module needs neither gunicorn nor
the servers: a class is made the first time it is looked up, and that raises
ImportError naming what is missing.
"""

from __future__ import annotations

import warnings

__all__ = ["UvicornWorker", "AiohttpWorker"]  # noqa: F822 (made by __getattr__ when looked up)

# uvicorn's Config(loop=...) takes "module:attribute" of a loop factory (0.36+).
_LOOP_FACTORY = "fastloop:new_event_loop"


def _uvicorn_base():
    try:
        from uvicorn_worker import UvicornWorker as base
    except ImportError:
        with warnings.catch_warnings():
            # uvicorn points to the uvicorn-worker package; the class it
            # deprecates is still the one to derive from without that package.
            warnings.filterwarnings("ignore", "The `uvicorn.workers` module", DeprecationWarning)
            from uvicorn.workers import UvicornWorker as base
    return base


def _make_uvicorn_worker():
    from uvicorn.config import Config

    base = _uvicorn_base()
    if not hasattr(Config, "get_loop_factory"):
        raise ImportError(
            "fastloop.workers.UvicornWorker needs uvicorn 0.36 or later "
            "(Config(loop='module:attribute'))"
        )

    class UvicornWorker(base):
        """uvicorn's gunicorn worker, serving on a fastloop loop."""

        CONFIG_KWARGS = {**base.CONFIG_KWARGS, "loop": _LOOP_FACTORY}

    return UvicornWorker


def _make_aiohttp_worker():
    from aiohttp.worker import GunicornWebWorker

    class AiohttpWorker(GunicornWebWorker):
        """aiohttp's gunicorn worker, serving on a fastloop loop."""

        def init_process(self) -> None:
            # aiohttp's worker makes its loop with asyncio.new_event_loop()
            # (as its uvloop worker relies on): the policy of this process,
            # which only this worker's code runs in, decides the kind.
            import fastloop

            fastloop._install()
            super().init_process()

    return AiohttpWorker


_FACTORIES = {"UvicornWorker": _make_uvicorn_worker, "AiohttpWorker": _make_aiohttp_worker}
_made: dict[str, type] = {}


def __getattr__(name):
    try:
        make = _FACTORIES[name]
    except KeyError:
        raise AttributeError(f"module 'fastloop.workers' has no attribute {name!r}") from None
    if name not in _made:
        try:
            cls = make()
        except ImportError as exc:
            raise ImportError(
                f"fastloop.workers.{name} needs gunicorn and its server installed: {exc}"
            ) from exc
        cls.__module__ = __name__
        cls.__qualname__ = name
        _made[name] = cls
    return _made[name]


def __dir__():
    return sorted([*globals(), *_FACTORIES])
