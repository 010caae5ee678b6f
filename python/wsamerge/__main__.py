"""The ``wsamerge`` command of the wheel: replaces this Python process with the bundled executable.

``os.execv`` hands over the arguments, standard streams, signals and exit status unchanged, so
``wsamerge ...`` behaves exactly as the binary does (only Python's start-up comes first).
``python -m wsamerge ...`` works the same way.
"""

from __future__ import annotations

import os
import sys

from . import binary


def main() -> int:
    try:
        executable = binary()
    except OSError as error:
        print(f"wsamerge: error: {error}", file=sys.stderr)
        return 69  # EX_UNAVAILABLE
    os.execv(executable, ["wsamerge", *sys.argv[1:]])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
