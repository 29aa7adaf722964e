"""``python -m evaluation`` / ``hypergen eval``: run the evaluation harness.

    python -m evaluation --config evaluation/configs/smollm2.yaml [key=value ...]
    python -m evaluation --config evaluation/configs/smollm2.yaml suite=DIR split= tasks=all
    python -m evaluation --config evaluation/configs/smollm2.yaml --fast out=/tmp/eval-fast

Writes ``<out>/results.json``, ``<out>/results.md``, ``<out>/scores.png`` and ``<out>/cache/``;
rerunning reuses every cached (system, task) result whose inputs did not change.
"""

from __future__ import annotations

import argparse
import logging
import sys

FAST_OVERRIDES = [
    "max_examples=4",
    "max_new_tokens=8",
    "bootstrap_samples=200",
    "check_max_new_tokens=16",
    "check_max_examples=2",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hypergen eval", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--config", help="YAML config (evaluation/configs/*.yaml); defaults otherwise"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument(
        "--fast", action="store_true", help=f"smoke-test sizes: {' '.join(FAST_OVERRIDES)}"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )

    from evaluation.config import load_config
    from evaluation.harness import run
    from evaluation.report import markdown

    try:
        config = load_config(args.config, [*(FAST_OVERRIDES if args.fast else []), *args.overrides])
        results = run(config)
    except (ValueError, FileNotFoundError) as err:
        print(f"hypergen eval: error: {err}", file=sys.stderr)
        return 2
    print(markdown(results))
    print(f"wrote {config.out}/results.json, results.md, scores.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
