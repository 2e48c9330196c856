"""Import the Adversarial Robustness Toolbox without letting it reset the process's logging.

``art/__init__.py`` calls ``logging.config.dictConfig`` at import, which *closes every existing handler* of the
process (the CLI's, a host application's, pytest's log capture) and binds a ``StreamHandler`` for loggers named
``tests`` to whatever ``sys.stderr`` is at that moment. mlwarden imports ART through :func:`import_art`, which
runs that import with ``dictConfig`` replaced by a no-op and then gives the ``art`` logger the ``NullHandler`` ART
meant it to have.
"""

from __future__ import annotations

import logging
import logging.config
import sys
import threading

_LOCK = threading.Lock()


def import_art() -> None:
    """Import ``art`` once, leaving logging as it was; a missing package is left for the caller to report."""
    if "art" in sys.modules:
        return
    with _LOCK:
        if "art" in sys.modules:
            return
        original = logging.config.dictConfig
        logging.config.dictConfig = lambda config: None
        try:
            import art  # noqa: F401
        except ImportError:
            return
        finally:
            logging.config.dictConfig = original
        logging.getLogger("art").addHandler(logging.NullHandler())
