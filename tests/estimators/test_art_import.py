"""Importing ART through mlwarden leaves the process's logging alone (ART's own import closes every handler).

``art/__init__.py`` runs ``logging.config.dictConfig``, which closes all existing handlers: a ``FileHandler``'s file
is closed (pytest's own log-file handler is one, which is how this was found: a model test run in the same process
as an earlier test broke pytest's capture).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import logging, sys
    handler = logging.FileHandler(sys.argv[1])
    logging.getLogger().addHandler(handler)
    opened = handler.stream
    {importer}
    assert "art" in sys.modules
    print("closed" if opened.closed else "open", handler in logging.getLogger().handlers)
    """
)


def _run(importer: str, log: Path) -> str:
    code = SCRIPT.format(importer=importer)
    return subprocess.run([sys.executable, "-c", code, str(log)], capture_output=True, text=True, check=True).stdout


def test_handlers_survive_mlwarden_importing_art(tmp_path: Path) -> None:
    assert _run("import mlwarden.estimators.subject", tmp_path / "a.log").strip() == "open True"


def test_arts_own_import_closes_them_which_is_why(tmp_path: Path) -> None:
    assert _run("import art", tmp_path / "b.log").startswith("closed")
