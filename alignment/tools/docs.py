"""The loss pages of the documentation, rendered from the registry (names, papers,
formulas, parameters with their types and defaults, TRL's names), so the docs cannot
drift from the code. `scripts/generate_docs.py` writes them into docs/losses.md and
tests/test_docs.py fails when the committed page differs."""

from __future__ import annotations

import dataclasses
import inspect
import sys

from alignment.losses import PreferenceLoss, available_losses

# The families in reading order: each is a module of alignment.losses, titled by its docstring.
FAMILIES = (
    "pairwise",
    "anchored",
    "margin_variants",
    "distributional",
    "listwise",
    "kto",
    "reference_free",
    "online",
    "self_play",
    "policy_gradient",
    "copg",
    "grpo",
    "reward_model",
)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _summary(cls: type[PreferenceLoss]) -> str:
    return (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ").strip()


def _trains_on(cls: type[PreferenceLoss]) -> str:
    """What the loss learns from, in the words a user picks a recipe by."""
    if cls.model_head != "policy":
        return {
            "reward": "scored lists (trains a reward model)",
            "preference": "pairs (trains a preference model)",
        }.get(cls.model_head, "pairs with user contexts (trains a VPL reward model)")
    if cls.online_only:
        feedback = {"rewards": "rewards", "preferences": "preferences"}.get(cls.feedback, "rewards or preferences")
        k = f"K = {cls.num_samples}" if cls.num_samples else "K >= 2"
        return f"online samples ({k}) judged by {feedback}"
    if cls.accepts_unpaired:
        return "pairs, lists or unpaired rows"
    return "pairs or lists"


def _reference(cls: type[PreferenceLoss]) -> str:
    needs = cls().needs_reference  # with the paper's defaults: some need one only for a KL weight > 0
    return "yes" if needs else "no"


def _family(cls: type[PreferenceLoss]) -> str:
    return cls.__module__.rsplit(".", 1)[-1]


def _by_family() -> dict[str, list[tuple[str, type[PreferenceLoss]]]]:
    families: dict[str, list[tuple[str, type[PreferenceLoss]]]] = {f: [] for f in FAMILIES}
    for name, cls in available_losses().items():
        family = _family(cls)
        if family not in families:
            raise ValueError(f"loss {name!r} is in module {cls.__module__}, not a family of FAMILIES: add it there")
        families[family].append((name, cls))
    return families


def _family_title(family: str) -> str:
    doc = inspect.getdoc(sys.modules[f"alignment.losses.{family}"]) or family
    return doc.split("\n\n")[0].replace("\n", " ").rstrip(":").strip()


def render_loss_summary() -> str:
    """One table of every registered loss: what it trains on, its reference, TRL's name and the paper."""
    lines = [
        f"{len(available_losses())} losses are registered (`alignment losses` prints the same list).",
        "",
        "| loss | trains on | reference | TRL | paper |",
        "|---|---|---|---|---|",
    ]
    for family in _by_family().values():
        for name, cls in family:
            aliases = "".join(f" (also `{a}`)" for a in cls.aliases)
            lines.append(
                f"| [`{name}`](#{name}){aliases} | {_trains_on(cls)} | {_reference(cls)} "
                f"| {_cell(cls.trl) or '—'} | {_cell(cls.paper)} |"
            )
    return "\n".join(lines)


def _parameters(cls: type[PreferenceLoss]) -> list[str]:
    fields = [f for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    if not fields:
        return ["No parameters."]
    rows = ["| parameter | type | default |", "|---|---|---|"]
    for f in fields:
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        rows.append(f"| `{f.name}` | `{_cell(kind)}` | `{f.default!r}` |")
    return rows


def render_loss_reference() -> str:
    """Each loss by family: its docstring, formula, parameters with the paper's defaults, and the recipe block."""
    out: list[str] = []
    for family, members in _by_family().items():
        out += [f"### {_family_title(family)}", ""]
        for name, cls in members:
            out += [f"#### `{name}`", ""]
            out += [(inspect.getdoc(cls) or "").strip(), ""]
            out += [f"**Paper:** {cls.paper}", ""]
            out += ["**Formula:**", "", "```text", cls.formula, "```", ""]
            if cls.trl:
                out += [f"**TRL:** {cls.trl}", ""]
            if cls.aliases:
                out += ["**Also registered as:** " + ", ".join(f"`{a}`" for a in cls.aliases), ""]
            reads = sorted(cls().reads)
            out += [f"**Reads:** {', '.join(f'`{r}`' for r in reads) if reads else 'the policy log-probs only'}", ""]
            out += _parameters(cls) + [""]
    return "\n".join(out).rstrip() + "\n"
