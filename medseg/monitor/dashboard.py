"""monitor.html: one self-contained page (plots as embedded PNG, no scripts, no external files) a person can read."""

from __future__ import annotations

import base64
import io
from html import escape
from typing import Any

from medseg.monitor.facts import CaseFacts
from medseg.monitor.report import Report

DPI = 100
STYLE = """
body{font-family:DejaVu Sans,Arial,sans-serif;margin:24px;color:#1a1a1a;max-width:1200px}
h1{font-size:24px}h2{font-size:19px;margin-top:28px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:8px 0;font-size:14px}td,th{border:1px solid #bbb;padding:4px 8px;text-align:left}
th{background:#eee}.alarm{background:#fde2e1}.ok{background:#e3f4e1}.insufficient{background:#fff1c9}
.banner{padding:12px;font-size:18px;font-weight:bold;margin:6px 0}
img{max-width:100%;display:block;margin:6px 0}
.grid{display:flex;flex-wrap:wrap;gap:8px}.grid img{width:49%}.small{color:#555;font-size:13px}
"""


def plot_text(text: object) -> str:
    """Text as matplotlib shows it literally: a `$` would start mathtext (and an unbalanced one crashes the plot)."""
    return str(text).replace("$", r"\$")


def _png(fig: Any) -> str:
    """A figure as a base64 PNG data URI; the figure is closed afterwards."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def flag_figure(code: str, rates: list[float], reference_end: int, cusum: dict[str, Any]) -> str:
    """Trailing rate of one QC flag over all cases, and its CUSUM with the decision limit."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 4.6), sharex=True)
    x = list(range(1, len(rates) + 1))
    top.plot(x, rates, color="#1f77b4", label="rate, trailing 20 cases")
    top.axhline(cusum["p0"], color="grey", ls=":", label=f"reference rate {cusum['p0']:.0%}")
    top.axhline(cusum["p1"], color="#d62728", ls=":", label=f"rate to detect {cusum['p1']:.0%}")
    top.set_ylim(-0.02, 1.02)
    top.set_ylabel("share of cases")
    top.set_title(plot_text(f"QC flag '{code}'"))
    top.legend(loc="upper left", fontsize=8)
    cx = list(range(reference_end + 1, reference_end + 1 + len(cusum["statistic"])))
    bottom.plot(cx, cusum["statistic"], color="#2ca02c", label="CUSUM")
    bottom.axhline(cusum["limit"], color="#d62728", ls="--", label=f"limit {cusum['limit']:g}")
    if cusum["alarm_index"] is not None:
        bottom.axvline(reference_end + 1 + cusum["alarm_index"], color="#d62728", label="alarm")
    bottom.set_xlabel("case number (order of use)")
    bottom.set_ylabel("CUSUM")
    bottom.legend(loc="upper left", fontsize=8)
    for ax in (top, bottom):
        ax.axvspan(0.5, reference_end + 0.5, color="#eeeeee", zorder=0)
    return _png(fig)


def volume_figure(organ: str, reference: list[float], recent: list[float], expected: tuple[float, float] | None) -> str:
    """Histogram of organ volumes: reference against recent, the expected range shaded."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    values = reference + recent
    bins = 20 if values else 1
    span = (min(values), max(values)) if values else (0, 1)
    for name, sample in (("reference", reference), ("recent", recent)):
        if sample:
            ax.hist(sample, bins=bins, range=span, alpha=0.55, density=True, label=f"{name} ({len(sample)})")
    if expected:
        ax.axvspan(*expected, color="#2ca02c", alpha=0.08, label=f"expected {expected[0]:g}-{expected[1]:g} ml")
    ax.set_xlabel(plot_text(f"{organ} volume (ml)"))
    ax.set_ylabel("density")
    ax.set_title(plot_text(f"{organ} volume: reference vs recent"))
    ax.legend(fontsize=8)
    return _png(fig)


def mix_figure(feature: str, mix: dict[str, Any], reference_end: int) -> str:
    """Stacked shares of each value of an acquisition fact per block of cases."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.2, 2.6))
    starts, size = mix["block_start"], mix["block_size"]
    bottom = [0.0] * len(starts)
    for value, shares in mix["shares"].items():
        ax.bar(starts, shares, width=size * 0.9, bottom=bottom, align="edge", label=plot_text(value))
        bottom = [b + s for b, s in zip(bottom, shares, strict=True)]
    ax.axvline(reference_end + 0.5, color="black", ls="--", label="end of reference")
    ax.set_ylim(0, 1)
    ax.set_ylabel("share")
    ax.set_xlabel(f"case number (blocks of {size})")
    ax.set_title(plot_text(f"acquisition mix: {feature}"))
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _png(fig)


def _case_links(keys: list[str], links: dict[str, str]) -> str:
    return ", ".join(f'<a href="{escape(links[k])}">{k}</a>' if k in links else k for k in keys) or "-"


def _table(headers: list[str], rows: list[tuple[list[str], bool]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        f'<tr class="{"alarm" if alarm else ""}">' + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>"
        for cells, alarm in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _alarm_section(report: Report, links: dict[str, str]) -> str:
    """The banners (alarms, not enough cases, or all within limits) and the alarm table."""
    parts = []
    if report.insufficient:
        parts.append(
            f'<div class="banner insufficient">Not monitored: {escape(report.insufficient)}. Only the volume range '
            "check ran; drift and QC-rate tests need more cases.</div>"
        )
    if not report.alarms:
        if not report.insufficient:
            parts.append('<div class="banner ok">No alarm: every watched fact is within its preset limits.</div>')
        return "".join(parts)
    items = "".join(
        f"<tr class='alarm'><td>{escape(a.kind)}</td><td>{escape(a.feature)}</td><td>{escape(a.message)}</td>"
        f"<td>{_case_links(a.cases, links)}</td></tr>"
        for a in report.alarms
    )
    parts.append(
        f'<div class="banner alarm">{len(report.alarms)} alarm(s): act per docs/risk/post-market-monitoring.md'
        f"</div><table><tr><th>kind</th><th>what</th><th>evidence</th><th>cases behind it (preview)</th></tr>"
        f"{items}</table>"
    )
    return "".join(parts)


def _models_table(report: Report) -> str:
    """Which model (name and version) ran how many reference and monitored cases."""
    ref, mon = report.models.get("reference", {}), report.models.get("monitored", {})
    rows = [([m, str(ref.get(m, 0)), str(mon.get(m, 0))], m not in ref) for m in sorted(set(ref) | set(mon))]
    return _table(["model", "reference cases", "monitored cases"], rows)


def render(
    report: Report,
    reference: list[CaseFacts],
    monitored: list[CaseFacts],
    series: dict[str, Any],
    volume_ranges: dict[str, tuple[float, float]],
    links: dict[str, str],
) -> str:
    """The whole page as one HTML string."""
    parts = [
        f"<h1>medseg post-market monitoring</h1><p class='small'>Reference: {escape(report.reference)} "
        f"({report.n_reference} cases); monitored: {report.n_monitored} cases, recent window the last "
        f"{report.n_recent}. Case keys are keyed digests; no patient data is shown.</p>",
        "<h2>Alarms</h2>",
        _alarm_section(report, links),
        "<h2>Models</h2>",
        _models_table(report),
    ]
    parts.append(
        "<h2>QC flag rates (CUSUM)</h2><p class='small'>Grey: reference cases. The CUSUM adds evidence "
        "for a rise of the flag's rate case by case; it alarms when it crosses the dashed limit.</p>"
    )
    for c in report.cusums:
        uri = flag_figure(c.code, series["flag_rates"][c.code], series["reference_end"], c.to_json())
        parts.append(f'<img alt="QC flag {escape(c.code)}" src="{uri}">')
    parts.append("<h2>Organ volumes</h2>")
    recent = monitored[-report.n_recent :] if report.n_recent else []
    for feature in sorted({k for c in reference for k in c.numbers if k.startswith("volume_ml:")}):
        organ = feature.split(":", 1)[1]
        ref = [c.numbers[feature] for c in reference if feature in c.numbers]
        rec = [c.numbers[feature] for c in recent if feature in c.numbers]
        parts.append(
            f'<img alt="{escape(organ)} volumes" src="{volume_figure(organ, ref, rec, volume_ranges.get(organ))}">'
        )
    parts.append("<h2>Acquisition mix over time</h2><div class='grid'>")
    for feature, mix in series["acquisition_mix"].items():
        parts.append(f'<img alt="mix of {escape(feature)}" src="{mix_figure(feature, mix, series["reference_end"])}">')
    constant = ", ".join(f"{k}: {v}" for k, v in sorted(series["constant"].items()))
    parts.append(f"</div><p class='small'>The same in every case: {escape(constant) or '-'}</p>")
    parts.append("<h2>Numbers: reference vs recent (Kolmogorov-Smirnov, Wasserstein)</h2>")
    parts.append(
        _table(
            ["fact", "median ref", "median recent", "KS", "p", "Wasserstein / IQR"],
            [
                (
                    [
                        d.feature,
                        f"{d.reference_median:.4g}",
                        f"{d.recent_median:.4g}",
                        f"{d.ks_statistic:.2f}",
                        f"{d.p_value:.1e}",
                        f"{d.wasserstein_ratio:.2f}",
                    ],
                    d.alarm,
                )
                for d in report.numeric
            ],
        )
    )
    parts.append("<h2>Categories: reference vs recent (chi-square)</h2>")
    parts.append(
        _table(
            ["fact", "reference counts", "recent counts", "p", "Cramer's V"],
            [
                (
                    [
                        d.feature,
                        _counts(d.reference_counts),
                        _counts(d.recent_counts),
                        f"{d.p_value:.1e}",
                        f"{d.cramers_v:.2f}",
                    ],
                    d.alarm,
                )
                for d in report.categorical
            ],
        )
    )
    if report.skipped:
        parts.append("<h2>Not compared</h2><ul>" + "".join(f"<li>{escape(s)}</li>" for s in report.skipped) + "</ul>")
    body = "\n".join(parts)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>medseg monitoring</title>'
        f"<style>{STYLE}</style></head><body>{body}</body></html>\n"
    )


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
