"""``hypergen serve``: the service's command.

setup.cfg registers ``main`` in the ``hypergen.commands`` entry-point group, where the ``hypergen``
command finds it; the library (``hypergen/``) never imports the service. The flags are defined in
``service.server``, imported only when the command runs.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Serve the adapter API and web page (HTTP, waitress)."""
    from service.server import main as serve

    return serve(argv)


if __name__ == "__main__":
    sys.exit(main())
