"""report.html from report.json: tables, per-case Dice/HD95 plots with CIs (inline SVG), subgroups, verdicts,
previews (worst case first) and the signature block. Rendered with Jinja2 (autoescaped)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medseg.io.atomic import atomic_write_text
from medseg.validation.report import HTML
from medseg.validation.signing import SignatureInfo

TEMPLATES = Path(__file__).with_name("templates")
W, BAR_H, PAD = 640, 22, 150


def _fmt(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def ci_label(level: float) -> str:
    """'95% CI' for level 0.95, '97.5% CI' for 0.975: the interval the criteria file pre-specified."""
    return f"{level * 100:.4g}% CI"


def bar_chart(
    title: str, cases: list[tuple[str, float]], agg: dict[str, Any], limit: float, unit: str = "", level: float = 0.95
) -> str:
    """Horizontal bars per case with the mean (line) and its CI at `level` (band), as an SVG string."""
    from markupsafe import escape

    span = max(limit, agg["maximum"], 1e-9)

    def x(v: float) -> float:
        return PAD + (W - PAD - 90) * v / span

    top, bottom = 26, 26 + BAR_H * len(cases) + 4
    lo, hi, mean = x(agg["ci_low"]), x(agg["ci_high"]), x(agg["mean"])
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{bottom + 26}" role="img">',
        f'<text x="4" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
        f'<rect x="{lo:.1f}" y="{top}" width="{max(hi - lo, 1):.1f}" height="{bottom - top}" fill="#9cc3e6" '
        f'opacity="0.45"><title>{ci_label(level)}</title></rect>',
    ]
    for i, (name, value) in enumerate(cases):
        y = 30 + i * BAR_H
        parts += [
            f'<text x="4" y="{y + 14}" font-size="12">{escape(name)}</text>',
            f'<rect x="{PAD}" y="{y}" width="{max(x(value) - PAD, 0.5):.1f}" height="{BAR_H - 6}" fill="#3b6ea5"/>',
            f'<text x="{x(value) + 4:.1f}" y="{y + 13}" font-size="11">{value:.3f}{unit}</text>',
        ]
    parts += [
        f'<line x1="{mean:.1f}" x2="{mean:.1f}" y1="{top}" y2="{bottom}" stroke="#c0392b" stroke-width="2"/>',
        f'<text x="{PAD}" y="{bottom + 16}" font-size="11">mean {agg["mean"]:.3f}{unit} (red line), {ci_label(level)} '
        f"{agg['ci_low']:.3f}-{agg['ci_high']:.3f}{unit} (band), bootstrap by patient</text></svg>",
    ]
    return "".join(parts)


def render(report: dict[str, Any], signature: SignatureInfo | None = None) -> str:
    """The HTML text of a report (with the signature block when signed)."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    organ = report["model"]["organ"]
    cases = sorted(report["cases"], key=lambda c: c["metrics"][organ]["dice"])
    dice = [(c["case_id"], c["metrics"][organ]["dice"]) for c in report["cases"]]
    hd = [(c["case_id"], c["metrics"][organ]["hd95_mm"]) for c in report["cases"]]
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]))
    env.filters["f"] = _fmt
    level = float(report.get("bootstrap", {}).get("level", 0.95))
    return env.get_template("report.html.j2").render(
        r=report, organ=organ, worst_first=cases, signature=signature,
        ci=ci_label(level),
        dice_svg=bar_chart(f"{organ} Dice per case", dice, report["aggregates"]["dice"], 1.0, level=level),
        hd_svg=bar_chart(f"{organ} HD95 per case (mm)", hd, report["aggregates"]["hd95_mm"], 10.0, " mm", level),
    )  # fmt: skip


def write_html(folder: Path, report: dict[str, Any], signature: SignatureInfo | None = None) -> Path:
    """Write report.html next to report.json."""
    path = folder / HTML
    atomic_write_text(path, render(report, signature), overwrite=True)
    return path
