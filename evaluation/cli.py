"""``hypergen eval``: the evaluation harness's command (also ``python -m evaluation``).

setup.cfg registers ``main`` in the ``hypergen.commands`` entry-point group, where the ``hypergen``
command finds it; the library (``hypergen/``) never imports the evaluation package.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation harness and write its report."""
    from evaluation.__main__ import main as evaluate

    return evaluate(argv)


if __name__ == "__main__":
    sys.exit(main())
