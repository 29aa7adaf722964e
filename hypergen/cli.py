"""The ``hypergen`` command: subcommands mapped to plain typed functions.

    hypergen generate "a task description" -o OUT         # OUT: one adapter folder (PEFT LoRA,
                                                           # or AdapterHub for a bottleneck checkpoint)
    hypergen generate "a task" --language sw -o OUT        # a description + language checkpoint
    hypergen generate --document doc.txt -o OUT            # a document checkpoint
    hypergen generate --examples demos.jsonl -o OUT        # a demonstrations checkpoint
    hypergen generate "one" "two" -o OUT                   # OUT/000-one, OUT/001-two
    hypergen generate --checkpoint DIR "a task" -o OUT     # another hypernetwork checkpoint
    hypergen init-checkpoint -o checkpoints/untrained      # an untrained (no-op) generator
    hypergen serve ... / hypergen eval ...                 # from the service and evaluation packages

``generate`` and ``init-checkpoint`` live here. Other commands are found through the
``hypergen.commands`` entry-point group (setup.cfg: ``serve = service.cli:main``), so the library
never imports the packages built on it. A command is ``main(argv: list[str]) -> int`` that parses
its own flags; the first line of its docstring is its one-line help. Nothing heavy (torch) is
imported before a command runs, so ``hypergen --help`` and argument errors are instant.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hypergen.config import (
    DEFAULT_BASE_MODEL,
    DEFAULT_ENCODER,
    DEFAULT_ENCODER_KIND,
    DEFAULT_HIDDEN_DIM,
    DEFAULT_LANGUAGE_FEATURES,
    DEFAULT_LORA_ALPHA,
    DEFAULT_LORA_RANK,
    DEFAULT_NUM_BLOCKS,
    DEFAULT_TARGET_MODULES,
    DTYPE_NAMES,
)

COMMAND_GROUP = "hypergen.commands"
PROG = "hypergen"

CommandMain = Callable[[list[str]], int]


# --- the library's own commands --------------------------------------------------------------


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "adapter"


def adapter_folders(descriptions: list[str], out: str | Path) -> list[Path]:
    """Where ``write_adapters`` writes: ``out`` for one description, ``out/<index>-<slug>`` for several."""
    if len(descriptions) <= 1:  # none: one adapter for a document or demonstrations
        return [Path(out)]
    return [Path(out) / f"{i:03d}-{_slug(d)}" for i, d in enumerate(descriptions)]


def write_adapters(
    checkpoint: str | Path | None,
    descriptions: list[str],
    out: str | Path,
    dtype: str = "float32",
    bf16: bool = False,
    overwrite: bool = False,
    language: str | None = None,
    document: str | None = None,
    examples: list[dict[str, str]] | None = None,
) -> list[Path]:
    """Write one adapter folder per description (the adapters made in one batch): what
    ``hypergen generate`` does. The folder is in the format of the checkpoint's adapter kind
    (``AdapterGenerator.save_adapter``): a PEFT LoRA folder, or for a bottleneck checkpoint an
    AdapterHub folder (``adapter_config.json`` + ``adapter.safetensors``).

    Args:
        checkpoint: hypernetwork checkpoint folder; None: the one shipped with the package
            (``hypergen.checkpoint.DEFAULT_CHECKPOINT``).
        descriptions: one adapter each; none: one adapter for the other parts alone (a
            checkpoint conditioned on a document or on demonstrations).
        out: for one description, the adapter folder; for several, a folder that receives one
            ``<index>-<slug>`` subfolder each (it is created if needed and nothing else in it is
            touched).
        dtype: dtype of the saved tensors.
        bf16: run encoder and hypernetwork under bfloat16 autocast (faster for large batches).
        overwrite: also replace adapter destinations that hold something other than an earlier
            adapter (never the working directory, home, or a folder above them).
        language: the language code every adapter is for (ISO 639-1 or 639-3), for a checkpoint
            whose condition is a description and a language.
        document: the context document every adapter is for (a checkpoint with a document part).
        examples: the input/output demonstrations every adapter is for (``{"input", "output"}``
            dicts; a checkpoint with an examples part).

    Every destination is checked before anything is loaded or written: a non-empty folder that
    is not an earlier adapter of the checkpoint's kind is an error unless ``overwrite``; an
    earlier adapter of that kind is replaced.
    """
    from hypergen.adapters.adapterhub import ADAPTERHUB_FOLDER
    from hypergen.adapters.export import ADAPTER_FOLDER
    from hypergen.atomic import check_destination
    from hypergen.checkpoint import CONFIG_NAME, DEFAULT_CHECKPOINT, checkpoint_adapter_kind

    if checkpoint is None:
        checkpoint = DEFAULT_CHECKPOINT
        if not (checkpoint / CONFIG_NAME).is_file():
            raise FileNotFoundError(
                f"the checkpoint shipped with hypergen is missing ({checkpoint}): reinstall "
                "hypergen or pass --checkpoint"
            )
    # the folder kind a rerun may replace: what save_adapter writes for this checkpoint
    folder_kind = {"lora": ADAPTER_FOLDER, "bottleneck": ADAPTERHUB_FOLDER}[
        checkpoint_adapter_kind(checkpoint)
    ]
    folders = adapter_folders(descriptions, out)
    if len(folders) > 1:
        out = Path(out)
        if out.exists() and (not out.is_dir() or out.is_symlink()):
            raise FileExistsError(f"{out} exists and is not a folder")
        if (out / ADAPTER_FOLDER.marker).is_file():
            raise FileExistsError(
                f"{out} is an adapter folder; several descriptions write one subfolder each "
                "into a folder of adapters: choose another -o"
            )
    for folder in folders:
        check_destination(folder, folder_kind, overwrite)

    import torch

    from hypergen.config import DTYPES
    from hypergen.generator import AdapterGenerator

    generator = AdapterGenerator.from_pretrained(checkpoint)
    given = {"language": language, "document": document, "examples": examples}
    extra = {part: value for part, value in given.items() if value is not None}
    # checked against what the checkpoint takes (a ValueError naming its parts) before generating
    conditions = [generator.condition(description=d, **extra) for d in descriptions] or [
        generator.condition(**extra)
    ]
    weights = generator.generate(conditions, autocast_dtype=torch.bfloat16 if bf16 else None)
    for i, folder in enumerate(folders):
        generator.save_adapter(weights.select(i), folder, dtype=DTYPES[dtype], overwrite=overwrite)
    return folders


def read_document(path: str) -> str:
    """The text of a document file (``-``: standard input); FileNotFoundError/ValueError."""
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"--document {path}: not UTF-8 text ({err.reason})") from err
    except IsADirectoryError as err:
        raise ValueError(f"--document {path} is a folder, not a text file") from err


def read_examples(path: str) -> list:
    """Demonstrations from a JSON list or a JSON Lines file (one object a line); the values are
    checked by the checkpoint's conditioner."""
    import json

    text = read_document(path).strip()
    try:
        if text.startswith("["):
            return json.loads(text)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise ValueError(
            f"--examples {path}: not a JSON list or JSON Lines of objects ({err})"
        ) from err


def _parser(command: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{PROG} {command}", description=description)
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return p


def _run(command: str, args: argparse.Namespace, action: Callable[[], None]) -> int:
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        action()
    # ModuleNotFoundError: an optional extra the checkpoint needs (its message says which)
    except (ValueError, FileNotFoundError, FileExistsError, ModuleNotFoundError) as err:
        print(f"{PROG} {command}: error: {err}", file=sys.stderr)
        return 2
    return 0


def generate_main(argv: list[str]) -> int:
    """Write adapters for task descriptions (one batch): PEFT LoRA or AdapterHub folders."""
    p = _parser("generate", generate_main.__doc__)
    p.add_argument(
        "descriptions",
        nargs="*",
        help="one or more task descriptions (none for a checkpoint conditioned only on a "
        "--document or --examples)",
    )
    p.add_argument(
        "-o",
        "--out",
        required=True,
        help="the adapter folder (one description), or a folder that receives one "
        "<index>-<slug> subfolder per description (several); a PEFT LoRA folder, or an "
        "AdapterHub folder (adapter_config.json + adapter.safetensors) for a checkpoint of the "
        "bottleneck kind",
    )
    p.add_argument(
        "--checkpoint",
        help="hypernetwork checkpoint folder (default: the trained SmolLM2 + MiniLM checkpoint "
        "shipped with hypergen)",
    )
    p.add_argument(
        "--language",
        help="language of every adapter (ISO 639-1 or 639-3 code, e.g. sw or swa), for a "
        "checkpoint conditioned on a description and a language",
    )
    p.add_argument(
        "--document",
        metavar="FILE",
        help="a UTF-8 text file: the context document of every adapter, for a checkpoint "
        "conditioned on a document ('-' reads standard input)",
    )
    p.add_argument(
        "--examples",
        metavar="FILE",
        help="demonstrations of the task, for a checkpoint conditioned on examples: a JSON list "
        'of {"input": ..., "output": ...} objects, or JSON Lines (.jsonl) of them',
    )
    p.add_argument("--dtype", choices=DTYPE_NAMES, default="float32", help="dtype of saved tensors")
    p.add_argument("--bf16", action="store_true", help="generate under bfloat16 autocast")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an adapter destination even if it holds other files (an earlier adapter "
        "is always replaced; other subfolders of a collection folder are never touched)",
    )
    args = p.parse_args(argv)
    if not (args.descriptions or args.document or args.examples):
        p.error("give a task description, --document or --examples")

    def action() -> None:
        document = None if args.document is None else read_document(args.document)
        examples = None if args.examples is None else read_examples(args.examples)
        # AdapterGenerator.from_pretrained warns (stderr) when the checkpoint is untrained.
        folders = write_adapters(
            args.checkpoint,
            args.descriptions,
            args.out,
            args.dtype,
            args.bf16,
            args.overwrite,
            language=args.language,
            document=document,
            examples=examples,
        )
        for folder in folders:
            print(folder)

    return _run("generate", args, action)


def init_checkpoint_main(argv: list[str]) -> int:
    """Create an untrained (no-op) hypernetwork checkpoint."""
    p = _parser("init-checkpoint", init_checkpoint_main.__doc__)
    p.add_argument("-o", "--out", required=True, help="checkpoint folder to write")
    p.add_argument(
        "--base-model", default=DEFAULT_BASE_MODEL, help="built-in name, local folder or Hub id"
    )
    p.add_argument(
        "--encoder-kind", default=DEFAULT_ENCODER_KIND, help="conditioner kind (text, hashing)"
    )
    p.add_argument("--encoder", default=DEFAULT_ENCODER, help="encoder name or folder")
    p.add_argument("--rank", type=int, default=DEFAULT_LORA_RANK)
    p.add_argument("--alpha", type=float, default=DEFAULT_LORA_ALPHA)
    p.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGET_MODULES),
        help="comma-separated module suffixes",
    )
    p.add_argument(
        "--language-features",
        help="also condition on a language: these lang2vec URIEL feature sets joined by '+' "
        f"(e.g. {DEFAULT_LANGUAGE_FEATURES})",
    )
    p.add_argument(
        "--condition",
        default="description",
        help="condition parts joined by '+': description, document (a context document, "
        "chunked and pooled by --encoder), examples (input/output demonstrations, likewise); "
        "e.g. document or description+examples",
    )
    p.add_argument("--hidden-dim", type=int, default=DEFAULT_HIDDEN_DIM)
    p.add_argument("--num-blocks", type=int, default=DEFAULT_NUM_BLOCKS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out even if it holds files other than an earlier checkpoint",
    )
    args = p.parse_args(argv)

    def action() -> None:
        from hypergen.atomic import check_destination
        from hypergen.checkpoint import CHECKPOINT_FOLDER
        from hypergen.generator import init_checkpoint

        check_destination(args.out, CHECKPOINT_FOLDER, args.overwrite)  # before loading models
        out = init_checkpoint(
            args.out,
            base_model=args.base_model,
            encoder_kind=args.encoder_kind,
            encoder=args.encoder,
            rank=args.rank,
            alpha=args.alpha,
            targets=tuple(t for t in args.targets.split(",") if t),
            hidden_dim=args.hidden_dim,
            num_blocks=args.num_blocks,
            seed=args.seed,
            overwrite=args.overwrite,
            language_features=args.language_features,
            condition=tuple(args.condition.split("+")),
        )
        print(f"wrote UNTRAINED checkpoint {out} (its adapters are no-ops until trained)")

    return _run("init-checkpoint", args, action)


# --- the top-level command -------------------------------------------------------------------


@dataclass
class Command:
    """A subcommand: ``load()`` gives its ``main``; ``origin`` is the package providing it."""

    name: str
    load: Callable[[], CommandMain]
    origin: str = "hypergen"

    def help(self) -> str:
        try:
            doc = self.load().__doc__ or ""
        except Exception as err:  # noqa: BLE001 - a broken plugin must not break --help
            return f"(cannot be loaded: {type(err).__name__}: {err})"
        return doc.strip().split("\n")[0].rstrip(".")


BUILTIN = {
    "generate": lambda: generate_main,
    "init-checkpoint": lambda: init_checkpoint_main,
}


def find_commands() -> dict[str, Command]:
    """The built-in commands, then those of the ``hypergen.commands`` entry points (first wins)."""
    from importlib.metadata import entry_points

    commands = {name: Command(name, load) for name, load in BUILTIN.items()}
    for ep in sorted(entry_points(group=COMMAND_GROUP), key=lambda ep: ep.name):
        if ep.name not in commands:
            origin = ep.value.split(":")[0].split(".")[0]
            commands[ep.name] = Command(ep.name, ep.load, origin)
    return commands


def _usage(commands: dict[str, Command]) -> str:
    width = max(len(name) for name in commands) + 2
    lines = [
        f"usage: {PROG} [-h] [-V] COMMAND [ARGS ...]",
        "",
        "Make adapters (LoRA or bottleneck) for a frozen language model from task descriptions.",
        "",
        "commands:",
    ]
    for name, command in commands.items():
        origin = "" if command.origin == "hypergen" else f" (from {command.origin})"
        lines.append(f"  {name:<{width}}{command.help()}{origin}")
    lines += ["", f"Run `{PROG} COMMAND --help` for a command's options."]
    return "\n".join(lines)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PROG)
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = find_commands()
    if not argv:
        print(_usage(commands), file=sys.stderr)
        return 2
    first, rest = argv[0], argv[1:]
    if first in ("-h", "--help"):
        print(_usage(commands))
        return 0
    if first in ("-V", "--version"):
        print(f"{PROG} {_version()}")
        return 0
    if first not in commands:
        print(
            f"{PROG}: error: unknown command {first!r} (choose from {', '.join(commands)}; "
            f"`{PROG} --help` lists them)",
            file=sys.stderr,
        )
        return 2
    return commands[first].load()(rest)


if __name__ == "__main__":
    sys.exit(main())
