"""The report of a sweep: the ``cl-replay compare`` tables of its finished cells, as markdown
(``results.md``) and the main table as a picture (``results.png``); for ``pretrain`` also the
cells' sample grids side by side (``samples.png``)."""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure


def write_report(command: str, run_dirs: list[Path], sweep_dir: Path) -> Path:
    """Write ``results.md``, ``results.png`` (and ``samples.png``) into ``sweep_dir``; returns the markdown's path."""
    if command == "pretrain":
        from cl_replay.compare import compare_pretrain_runs

        markdown = compare_pretrain_runs(run_dirs, sweep_dir / "samples.png", paper=True)
    else:
        from strategies.summary import summarize_cl_runs

        markdown = summarize_cl_runs(run_dirs)
    path = sweep_dir / "results.md"
    path.write_text(markdown + "\n")
    save_table_png(markdown, sweep_dir / "results.png")
    return path


def markdown_rows(markdown: str) -> list[list[str]]:
    """The cells of the first markdown table in ``markdown`` (header first, the ``---`` row dropped)."""
    lines: list[str] = []
    for line in markdown.splitlines():
        if line.startswith("|"):
            lines.append(line)
        elif lines:
            break
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]
    return [row for row in rows if not all(set(cell) <= set("-:") for cell in row)]


def save_table_png(markdown: str, path: Path) -> None:
    """The first table of ``markdown`` drawn as a picture (header in bold)."""
    header, *body = markdown_rows(markdown)
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    figure = Figure(figsize=(0.5 + 0.085 * sum(widths) + 0.2 * len(widths), 0.4 + 0.3 * (len(body) + 1)))
    axes = figure.add_subplot()
    axes.axis("off")
    table = axes.table(cellText=body or None, colLabels=header, loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.auto_set_column_width(list(range(len(header))))
    for (row, _), cell in table.get_celld().items():
        if row == 0:
            cell.set_text_props(fontweight="bold")
    figure.savefig(path, dpi=150, bbox_inches="tight")
