"""Results -> a Markdown table and a PNG of per-task scores by system (matplotlib, Agg canvas)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypergen.atomic import atomic_write_text

GROUP_TITLES = {  # in report order
    "heldout": "Held-out tasks",
    "validation": "Validation tasks (unseen; for choosing checkpoints)",
    "train": "Training tasks",
    "suite": "Suite tasks",
    "other": "Other tasks",
}
GROUP_ORDER = tuple(GROUP_TITLES)
SIDES = ("without", "with")  # the generation check's two runs (evaluation.generation_check)
METRIC_TITLES = {"acc": "accuracy", "em": "exact match", "rougeL": "ROUGE-L"}


def _ci(entry: dict[str, Any] | None, digits: int = 3, signed: bool = False) -> str:
    if not entry:
        return "–"
    sign = "+" if signed else ""
    lo, hi = entry["ci"]
    return f"{entry['mean']:{sign}.{digits}f} [{lo:{sign}.{digits}f}, {hi:{sign}.{digits}f}]"


def _value(entry: dict[str, Any] | None) -> str:
    return f"{entry['mean']:.3f}" if entry else "–"


def _header(results: dict[str, Any]) -> list[str]:
    config, ckpt, data = results["config"], results["checkpoint"], results["data"]
    model = results["model"]
    lines = [f"# Evaluation results: `{config['out']}`", ""]
    model_line = f"- Base model: `{model['name']}`"
    if model.get("sha256"):
        model_line += f" (weights sha256 `{model['sha256'][:12]}`)"
    if model["name"] == "smollm2-135m":
        model_line += "; SmolLM2-135M-Instruct's 4-bit GGUF weights dequantised to fp32"
    lines.append(model_line)
    if ckpt.get("hash"):
        state = (
            "**UNTRAINED (its adapters are no-ops)**"
            if ckpt.get("untrained")
            else f"trained for {ckpt['trained_steps']} steps"
        )
        lines.append(
            f"- Hypernetwork checkpoint: `{ckpt['path']}` (sha256 `{ckpt['hash'][:12]}`), {state}"
        )
    else:
        lines.append(f"- Hypernetwork checkpoint: none ({ckpt.get('error', 'not loaded')})")
    lines.append(
        f"- Tasks: `{config['suite'] or '$HYPERGEN_HOME/data/bigbench'}`"
        + (f", split `{data['split']}`" if data.get("split") else "")
        + f"; data version `{data['version'][:12]}`"
    )
    cap = config["max_examples"]
    lines.append(
        f"- Examples: {'up to ' + str(cap) if cap else 'all'} test examples per task, sampled with seed "
        f"{config['seed']}; every system scores the same examples"
    )
    precision = config["dtype"] + (f", {config['autocast']} autocast" if config["autocast"] else "")
    lines.append(
        f"- Scoring: multiple choice by option log-likelihood (acc: summed; acc_norm: per token); generative by "
        f"greedy decoding (at most {config['max_new_tokens']} new tokens, one line), exact match and ROUGE-L; "
        f"{precision}"
    )
    lines.append(
        f"- Intervals: 95% percentile bootstrap over examples ({config['bootstrap_samples']} draws; macro: tasks "
        f"resampled independently). Δ vs base is paired on the same examples."
    )
    cache = results["cache"]
    lines.append(
        f"- Time: {results['compute_seconds'] / 60:.1f} min of scoring for all results shown; this "
        f"invocation {results['wall_seconds'] / 60:.1f} min ({cache['computed']} results computed, "
        f"{cache['reused']} reused from the cache)"
    )
    return lines


def _summary_table(summary: dict[str, Any], systems: list[str]) -> list[str]:
    lines = [
        "| System | Score (macro, 95% CI) | Δ vs base (95% CI) | MC acc | MC acc (len-norm) | Gen EM | Gen ROUGE-L | Tasks | Examples |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in systems:
        entry = summary[name]
        if entry["tasks_ok"] == 0:
            reasons = sorted(set(entry["missing"].values()))
            reason = reasons[0] if len(reasons) == 1 else f"{len(reasons)} reasons, see below"
            lines.append(f"| {name} | missing: {reason} | | | | | | 0/{entry['tasks']} | 0 |")
            continue
        lines.append(
            f"| {name} | {_ci(entry['score'])} | {_ci(entry.get('delta_vs_base'), signed=True) if name != 'base' else ''} "
            f"| {_value(entry['acc'])} | {_value(entry['acc_norm'])} | {_value(entry['em'])} | {_value(entry['rougeL'])} "
            f"| {entry['tasks_ok']}/{entry['tasks']} | {entry['examples']} |"
        )
    return lines


def _task_table(results: dict[str, Any], task_names: list[str], systems: list[str]) -> list[str]:
    lines = [
        "| Task | Kind | Metric | n | " + " | ".join(systems) + " |",
        "|---|---|---|---|" + "---|" * len(systems),
    ]
    for task in task_names:
        info = results["tasks"][task]
        cells = []
        for name in systems:
            r = results["results"][name][task]
            cells.append(f"{r['score']:.2f}" if r["status"] == "ok" else "missing")
        kind = "MC" if info["kind"] == "multiple_choice" else "gen"
        lines.append(
            f"| {task} | {kind} | {info['metric']} | {info['n_sampled']} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def _signed(entry: dict[str, Any] | None, digits: int = 3) -> str:
    return _ci(entry, digits, signed=True)


def _comparison_lines(comparisons: dict[str, Any] | None, task_names: list[str]) -> list[str]:
    """Paired differences between generated systems (macro and per task), and the share of the
    oracle's gain over base that ``generated`` recovers."""
    if not comparisons:
        return []
    lines: list[str] = []
    paired = [p for p in comparisons["paired"] if p["delta"]]
    if paired:
        titles = [f"{p['system']} − {p['other']}" for p in paired]
        lines += [
            "",
            (
                "Paired differences on the same examples (headline metric, 95% CI; > 0: the first "
                "system scores higher; for generated − generated_other_task or generated_random: the "
                "task's own description beats the other condition):"
            ),
            "",
            "| Task | n | " + " | ".join(titles) + " |",
            "|---|---|" + "---|" * len(paired),
        ]
        macro = [
            f"**{_signed(p['delta'])}** ({p['delta']['tasks']} tasks, {p['examples']} ex.)"
            for p in paired
        ]
        lines.append("| **macro** | | " + " | ".join(macro) + " |")
        for task in task_names:
            cells = [p["per_task"].get(task) for p in paired]
            if not any(cells):
                continue
            n = next(c["n"] for c in cells if c)
            lines.append(
                f"| {task} | {n} | " + " | ".join(_signed(c) if c else "–" for c in cells) + " |"
            )
    recovered = comparisons.get("oracle_gain_recovered")
    if recovered:
        share = (
            f"{100 * recovered['share']:.0f}%"
            if recovered["share"] is not None
            else "undefined (the oracle does not beat base)"
        )
        lines += [
            "",
            (
                f"Oracle gain recovered by `{recovered['system']}`: {share} "
                f"(macro over the tasks with an oracle LoRA, {recovered['tasks']}: "
                f"{recovered['system']} − base {recovered['gain']:+.3f}, "
                f"oracle_lora − base {recovered['oracle_gain']:+.3f})."
            ),
        ]
    return lines


def _number(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _specificity_lines(spec: dict[str, Any] | None) -> list[str]:
    """Cosines between generated adapters' updates (``evaluation.specificity``): delta-W for LoRA,
    the linearised update for bottleneck adapters (reports without ``quantity`` are LoRA's)."""
    if not spec:
        return []
    if spec["status"] != "ok":
        return ["", f"Adapter specificity: missing ({spec.get('reason', '')})."]
    undefined = (
        f"; {spec['undefined_pairs']} pairs with an all-zero adapter left out"
        if spec["undefined_pairs"]
        else ""
    )
    bottleneck = "bottleneck" in spec.get("quantity", "")  # see evaluation.specificity.GEOMETRY
    what, norm = (
        ("linearised bottleneck updates [U·D | U·b_d + b_u], all blocks", "‖update‖")
        if bottleneck
        else ("delta-W, all modules", "‖ΔW‖")
    )
    lines = [
        "",
        (
            f"Adapter specificity (cosine between generated {what}; {spec['tasks']} tasks"
            f"{undefined}): mean pairwise cosine across the tasks' own-description adapters "
            f"**{_number(spec['mean_pairwise_cosine'])}** (1: one adapter for every task); "
            f"random-string adapters among themselves {_number(spec['random_mean_pairwise_cosine'])}; "
            f"each task's adapter vs its random-string adapter, mean "
            f"**{_number(spec['mean_cosine_to_random'])}**."
        ),
        "",
        f"| Task | cos(own, random string) | mean cos(own, other tasks) | {norm} |",
        "|---|---|---|---|",
    ]
    for task, entry in spec["per_task"].items():
        lines.append(
            f"| {task} | {_number(entry['cosine_to_random'])} | "
            f"{_number(entry['mean_cosine_to_others'])} | {entry['norm']:.4g} |"
        )
    if spec.get("skipped"):
        lines += ["", f"Left out (no description): {', '.join(spec['skipped'])}."]
    return lines


def _cell(text: str) -> str:
    """A reply as one Markdown table cell: pipes escaped, newlines shown as ⏎."""
    text = text.replace("|", "\\|").replace("\n", " ⏎ ")
    return f"`{text}`" if text.strip() else "*(empty)*"


def _check_lines(check: dict[str, Any] | None) -> list[str]:
    """The generation check: per set, metrics without vs with the adapter; the chat replies."""
    if not check or check.get("status") == "off":
        return []
    settings = check["settings"]
    lines = [
        "",
        "## Generation check",
        "",
        (
            f"Greedy replies of at most {settings['max_new_tokens']} new tokens, stopping only at "
            f"end-of-sequence ids {settings['stop_ids']} (not at newlines), once **without** an "
            "adapter and once **with** the adapter generated from the prompt's description. `chat`: "
            f"the prompts of `{Path(settings['chat_prompts']).name}` through the chat template; a "
            f"task name: its first {settings['max_examples_per_task']} examples, plain prompts. "
            "Distinct bigrams: distinct / all word bigrams of a reply, mean over replies of two or more "
            "words (target: with / without >= 0.9); ends: share of replies ending before the cap; "
            f"loops: share with a distinct-bigram ratio below {settings['loop_threshold']}; "
            "EM (first line) and contains-reference over the items with references."
        ),
        "",
        (
            "| Set | n | Distinct bigrams without | with | with / without | Ends without | with "
            "| Loops without | with | EM without | with | Contains without | with |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in check["sets"].items():
        if entry.get("status") != "ok":
            lines.append(f"| {name} | missing: {entry.get('reason', '')} |" + " |" * 11)
            continue
        sides = [entry[side] if entry[side]["status"] == "ok" else None for side in SIDES]
        cells = {
            key: " | ".join(_number(side.get(key), 2) if side else "missing" for side in sides)
            for key in ("distinct_bigrams", "ended", "loops", "em", "contains")
        }
        lines.append(
            f"| {name} | {entry['n']} | {cells['distinct_bigrams']} "
            f"| {_number(entry['distinct_ratio'], 2)} | {cells['ended']} | {cells['loops']} "
            f"| {cells['em']} | {cells['contains']} |"
        )
    reasons = sorted(
        {
            entry[side]["reason"]
            for entry in check["sets"].values()
            if entry.get("status") == "ok"
            for side in SIDES
            if entry[side]["status"] != "ok"
        }
    )
    if reasons:
        lines += ["", "Missing sides: " + "; ".join(reasons) + "."]
    chat = check["sets"].get("chat")
    if chat and chat.get("replies"):
        lines += [
            "",
            "Chat replies (⏎: newline; *cut*: reached the token cap):",
            "",
            "| Prompt | Reference | Without adapter | With adapter |",
            "|---|---|---|---|",
        ]
        for reply in chat["replies"]:
            cells = []
            for side in SIDES:
                row = reply.get(side)
                if row is None:
                    cells.append("missing")
                else:
                    cells.append(_cell(row["text"]) + ("" if row["ended"] else " *cut*"))
            reference = " / ".join(reply["references"]) or "–"
            lines.append(f"| {_cell(reply['prompt'])} | {reference} | " + " | ".join(cells) + " |")
    if any(e.get("kind") == "task" for e in check["sets"].values()):
        lines += [
            "",
            "Replies to task examples are kept in `cache/generation_check/` only (task-derived text).",
        ]
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The whole report: header, then per group a summary table and a per-task table."""
    systems = list(results["systems"])
    lines = _header(results)
    for group, summary in results["summary"].items():
        names = [t for t, info in results["tasks"].items() if info["group"] == group]
        examples = sum(results["tasks"][t]["n_sampled"] for t in names)
        lines += [
            "",
            f"## {GROUP_TITLES.get(group, group)} ({len(names)} tasks, {examples} examples)",
            "",
        ]
        lines += _summary_table(summary, systems)
        lines += _comparison_lines(results.get("comparisons", {}).get(group), names)
        lines += _specificity_lines(results.get("specificity", {}).get(group))
        lines += [
            "",
            "Per task (headline metric: acc for multiple choice, em or rougeL for generative tasks):",
            "",
        ]
        lines += _task_table(results, names, systems)
    lines += _check_lines(results.get("generation_check"))
    lines += ["", "## Systems", ""]
    lines += [f"- `{name}`: {summary}" for name, summary in results["systems"].items()]
    missing = []
    for name in systems:
        reasons: dict[str, list[str]] = {}
        for task, r in results["results"][name].items():
            if r["status"] != "ok":
                reasons.setdefault(r.get("reason", ""), []).append(task)
        for reason, tasks in reasons.items():
            where = "all tasks" if len(tasks) == len(results["tasks"]) else ", ".join(tasks)
            missing.append(f"- `{name}` ({where}): {reason}")
    if missing:
        lines += ["", "## Missing", ""] + missing
    return "\n".join(lines) + "\n"


def write_markdown(results: dict[str, Any], path: str | Path) -> Path:
    return atomic_write_text(path, markdown(results))


def plot_scores(results: dict[str, Any], path: str | Path) -> Path:
    """A heatmap per task group: rows are tasks (and the macro-average), columns systems.

    Cells show the headline metric; missing (system, task) pairs are grey and say so.
    """
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    systems = list(results["systems"])
    groups = list(results["summary"])
    rows_per_group = {
        g: [t for t, info in results["tasks"].items() if info["group"] == g] + ["macro-average"]
        for g in groups
    }
    height = sum(0.32 * len(r) + 1.2 for r in rows_per_group.values()) + 0.8
    fig = Figure(figsize=(1.0 * len(systems) + 4.5, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(
        len(groups), 1, squeeze=False, height_ratios=[len(r) + 2 for r in rows_per_group.values()]
    )
    for ax, group in zip(axes[:, 0], groups):
        rows = rows_per_group[group]
        grid = np.full((len(rows), len(systems)), np.nan)
        for j, name in enumerate(systems):
            for i, task in enumerate(rows[:-1]):
                r = results["results"][name][task]
                if r["status"] == "ok":
                    grid[i, j] = r["score"]
            score = results["summary"][group][name]["score"]
            if score:
                grid[-1, j] = score["mean"]
        masked = np.ma.masked_invalid(grid)
        cmap = colormaps["viridis"].with_extremes(bad="#dddddd")
        image = ax.imshow(masked, cmap=cmap, vmin=0, vmax=1, aspect="auto")
        for i in range(len(rows)):
            for j in range(len(systems)):
                text = "missing" if np.isnan(grid[i, j]) else f"{grid[i, j]:.2f}"
                entry = results["summary"][group][systems[j]]
                if i == len(rows) - 1 and 0 < entry["tasks_ok"] < entry["tasks"]:
                    text += f"\n({entry['tasks_ok']}/{entry['tasks']} tasks)"
                color = "black" if np.isnan(grid[i, j]) or grid[i, j] > 0.6 else "white"
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
        ax.axhline(len(rows) - 1.5, color="white", linewidth=2)
        labels = [f"{t} ({METRIC_TITLES[results['tasks'][t]['metric']]})" for t in rows[:-1]] + [
            "macro-average"
        ]
        ax.set_yticks(range(len(rows)), labels, fontsize=8)
        ax.set_xticks(range(len(systems)), systems, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{GROUP_TITLES.get(group, group)}: per-task score by system", fontsize=10)
        fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
