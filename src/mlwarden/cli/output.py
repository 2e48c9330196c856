"""Where a command's report goes: stdout, or a file written atomically (``--output``)."""

from __future__ import annotations

import sys

from mlwarden.core.errors import UsageError
from mlwarden.core.files import write_atomically


def emit_report(text: str, output: str | None, what: str) -> None:
    """Write ``text`` to ``output`` (saying so on stderr) or to stdout.

    Raises:
        UsageError: the file cannot be written (nothing half-written is left behind).
    """
    if not output:
        sys.stdout.write(text)
        return
    try:
        write_atomically(output, text)
    except OSError as exc:
        raise UsageError(f"--output: cannot write {output}: {exc.strerror or exc}") from None
    print(f"wrote {what} {output}", file=sys.stderr)
