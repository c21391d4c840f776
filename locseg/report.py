"""The run in one place: every number with its split, the plots and overlays, run times and the config.

Two twins are written: an HTML file that stands alone (images embedded as base64 data URIs, inline CSS,
no script), to mail or archive, and a Markdown file that links the PNGs by relative path, to read in a
repository browser. Both come from the same rows, so they cannot disagree.
"""

from __future__ import annotations

import base64
import csv
import html
import importlib.metadata
import math
import os
import platform
import re
from pathlib import Path

import yaml

from locseg.config import config_hash
from locseg.fsutil import atomic_path, read_json

NA = "n/a"
# Its own timing file is left out of the run-time table: it is from the previous report, if any.
_SELF_RULE = "report"
# The line locseg.devices.pick_device writes to the log of every job that runs a model: "running on cpu",
# "running on cuda:1 (NVIDIA H100 80GB HBM3), GPU <uuid> of this machine".
_DEVICE_LINE = re.compile(r"running on (cpu|cuda:\d+ \([^)\n]*\))")

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1, h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: .3em .7em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: .85em; }
.muted { color: #777; }
""".strip()


def fmt(value, scale: float = 1.0, digits: int = 1) -> str:
    """A number for a table: `value * scale` with `digits` decimals; None and NaN read as 'n/a'."""
    if value is None:
        return NA
    try:
        x = float(value)
    except (TypeError, ValueError):
        return NA
    if not math.isfinite(x):
        return NA
    return f"{x * scale:.{digits}f}"


def pct(value) -> str:
    """mIoU and fractions as percentages with one decimal (the papers' 68.8)."""
    return fmt(value, 100.0, 1)


# --------------------------------------------------------------------------- numbers


def result_rows(cams: dict, masks: dict, deeplab: dict[str, dict], gap: dict) -> list[dict]:
    """One row per reported number: what, split, mIoU, ignored fraction, images, a note."""

    def row(what, m, note="", round_=None):
        # A round's mIoU is scored from its probabilities; its ignored fraction is not recorded.
        miou, ignored = (m.get("miou"), m.get("ignored_frac")) if round_ is None else (round_["miou"], None)
        return {"what": what, "split": m.get("split", NA), "miou": pct(miou), "ignored": pct(ignored),
                "images": str(m.get("n_images", NA)), "note": note}

    rows = [row("CAM baseline (best background threshold)", cams,
                f"threshold {fmt(cams.get('best_threshold'), digits=2)}")]
    for r in masks.get("rounds", []):
        rows.append(row(f"resegmentation round {r['round']}", masks, "assembled from this round's probabilities",
                        round_=r))
    rows.append(row("pseudo masks (exported)", masks,
                    f"bg_score {fmt(masks.get('bg_score'), digits=2)}, band {fmt(masks.get('band'), digits=2)}"))
    for labels, m in deeplab.items():
        rows.append(row(f"DeepLab trained on {labels} labels", m, _inference_note(m)))
    rows.append({"what": "DeepLab pseudo / GT (supervision gap)", "split": gap.get("split", NA), "miou": NA,
                 "ignored": NA, "images": NA,
                 "note": f"ratio {fmt(gap.get('ratio'), digits=3)} = {pct(gap.get('miou_pseudo'))} / "
                         f"{pct(gap.get('miou_gt'))}"})
    return rows


def _inference_note(metrics: dict) -> str:
    """How DeepLab was run on the images (test-time scales and flip change the figure by points)."""
    scales = metrics.get("scales")
    if not scales:
        return ""
    views = "scale " if len(scales) == 1 else "scales "
    views += " / ".join(fmt(s, digits=2) for s in sorted(scales))
    return views + (" + flip" if metrics.get("flip") else ", no flip")


def model_rows(config: dict) -> list[dict]:
    """How each trained model's backbone started: a ResNet "trained from scratch" explains a low figure."""
    from locseg.weights import describe_init

    rows = []
    for stage, what in (("cam", "CAM classifier"), ("segmenter", "segmenter"),
                        ("deeplab", "DeepLab (pseudo and GT labels)")):
        section = config.get(stage, {})
        if "backbone" not in section:
            continue
        init = describe_init(section["backbone"], section.get("weights"))
        if stage == "cam" and section.get("source") == "weights":
            init = f"released weights {section['weights']}, not trained"
        if stage == "segmenter" and section.get("kind") == "sam":
            rows.append({"model": "segmenter: Segment Anything", "backbone": section["sam"]["model"],
                         "init": _sam_init(section["sam"])})
            continue
        rows.append({"model": what, "backbone": section["backbone"], "init": init})
    return rows


def segmenter_name(config: dict) -> str:
    """Which segmenter made the pseudo masks, in words (the report's headline)."""
    seg = config.get("segmenter", {})
    if seg.get("kind") != "sam":
        return "the learned segmenter"
    sam = seg["sam"]
    return f"Segment Anything ({sam['model']}, prompts {' + '.join(sam['prompts'])})"


def _sam_init(sam: dict) -> str:
    from locseg.weights import sam_file

    where = f"local checkpoint {sam['checkpoint']}" if sam["checkpoint"] else f"released {sam_file(sam['model']).name}"
    return f"{where}, not trained; prompts {' + '.join(sam['prompts'])} from the CAMs"


def _per_rule_files(root: Path, ext: str):
    """(rule, path) of every `ext` file under root: `<rule>.<ext>` or `<rule>/<job pattern>.<ext>`."""
    for path in sorted(root.rglob(f"*.{ext}")) if root.is_dir() else []:
        rel = path.relative_to(root)
        yield (rel.parts[0] if len(rel.parts) > 1 else path.stem), path


def rule_devices(logs_dir) -> dict[str, str]:
    """Per rule: the device(s) its jobs ran on, read from each job log's device line (see _DEVICE_LINE).
    Rules that run no model (or ran none, e.g. imported CAMs) have no entry."""
    found: dict[str, set[str]] = {}
    for rule, path in _per_rule_files(Path(logs_dir), "log"):
        lines = _DEVICE_LINE.findall(path.read_text(encoding="utf-8", errors="replace"))
        if lines:
            found.setdefault(rule, set()).add(lines[-1])
    return {rule: ", ".join(sorted(devices)) for rule, devices in found.items()}


def benchmark_rows(benchmarks_dir, logs_dir=None) -> list[dict]:
    """Per rule: jobs, total and longest wall time (the `s` column of Snakemake's benchmark TSVs), and the
    device(s) its jobs ran on (from the job logs in `logs_dir`; empty for rules without a model)."""
    devices = rule_devices(logs_dir) if logs_dir else {}
    per_rule: dict[str, list[float]] = {}
    for rule, path in _per_rule_files(Path(benchmarks_dir), "tsv"):
        if rule == _SELF_RULE:
            continue
        with open(path, newline="") as fh:
            for rec in csv.DictReader(fh, delimiter="\t"):
                try:
                    per_rule.setdefault(rule, []).append(float(rec["s"]))
                except (KeyError, TypeError, ValueError):
                    raise ValueError(f"{path}: not a Snakemake benchmark TSV (no numeric 's' column)") from None
    rows = [{"rule": rule, "jobs": str(len(s)), "total_s": fmt(sum(s)), "max_s": fmt(max(s)),
             "device": devices.get(rule, "")}
            for rule, s in sorted(per_rule.items(), key=lambda kv: -sum(kv[1]))]
    if per_rule:
        every = [x for s in per_rule.values() for x in s]
        rows.append({"rule": "all rules (sum of job times)", "jobs": str(len(every)), "total_s": fmt(sum(every)),
                     "max_s": fmt(max(every)), "device": ""})
    return rows


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "locseg", "snakemake"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = NA
    return out


# --------------------------------------------------------------------------- rendering


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html_table(headers: list[str], keys: list[str], rows: list[dict], numeric=()) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td class=\"num\">{e(r[k])}</td>" if k in numeric else f"<td>{e(r[k])}</td>"
                         for k in keys) + "</tr>\n"
        for r in rows)
    return f"<table>\n<tr>{head}</tr>\n{body}</table>"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(headers: list[str], keys: list[str], rows: list[dict]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md_cell(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


_RESULT_COLS = (["figure", "split", "mIoU (%)", "ignored GT area (%)", "images", "note"],
                ["what", "split", "miou", "ignored", "images", "note"])
_MODEL_COLS = (["model", "backbone", "initialisation"], ["model", "backbone", "init"])
_BENCH_COLS = (["rule", "jobs", "total (s)", "longest job (s)", "device"],
               ["rule", "jobs", "total_s", "max_s", "device"])


def _validation_lines(validation_json) -> list[str]:
    """What validate_dataset kept and left out (on_bad_image: skip), so a smaller split is never a surprise."""
    if validation_json is None:
        return ["not run"]
    report = read_json(validation_json)
    lines = [f"{split}: {n} images used" for split, n in report.get("kept", {}).items()]
    for split, ids in report.get("skipped", {}).items():
        if ids:
            lines.append(f"{split}: {len(ids)} skipped: {', '.join(ids)}")
    lines += [f"problem: {p}" for p in report.get("problems", [])]
    return lines


def write_report(html_path, md_path, *, cams_json, masks_json, deeplab_jsons: dict, gap_json,
                 plots: dict[str, os.PathLike], benchmarks_dir, config: dict, validation_json=None,
                 logs_dir=None) -> dict:
    """Write the HTML and Markdown report; `plots` maps a caption to a PNG (shown in that order); the job logs
    in `logs_dir` tell the device each rule ran on.

    Returns the rows (results, benchmarks) and the config hash, for callers and tests.
    """
    html_path, md_path = Path(html_path), Path(md_path)
    cams, masks, gap = read_json(cams_json), read_json(masks_json), read_json(gap_json)
    deeplab = {labels: read_json(p) for labels, p in deeplab_jsons.items()}
    plots = {caption: Path(p) for caption, p in plots.items()}
    for p in plots.values():
        if not p.is_file():
            raise FileNotFoundError(f"{p}: plot for the report not found")
    results = result_rows(cams, masks, deeplab, gap)
    models = model_rows(config)
    checks = _validation_lines(validation_json)
    bench = benchmark_rows(benchmarks_dir, logs_dir)
    chash = config_hash(config)
    vers = versions()
    config_yaml = yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=100)
    meta = {"config hash": chash, "seed": str(config.get("seed", NA)), **vers}
    title = "locseg report"
    headline = (f"pseudo masks by {segmenter_name(config)}: {pct(masks.get('miou'))} mIoU on {masks.get('split', NA)}; "
                f"DeepLab on pseudo labels "
                f"reaches {fmt(gap.get('ratio'), digits=3)} of the GT-trained model on {gap.get('split', NA)}")

    e = html.escape
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{e(title)}</title>\n"
             f"<style>\n{_CSS}\n</style>\n</head>\n<body>\n<h1>{e(title)}</h1>\n<p>{e(headline)}</p>",
             "<h2>Numbers</h2>", _html_table(*_RESULT_COLS, results, numeric={"miou", "ignored", "images"}),
             "<p class=\"muted\">mIoU: mean over classes present in GT or prediction; GT 255 is not scored; "
             "a predicted 255 is a miss, and the ignored column is the share of GT area predicted as 255.</p>",
             "<h2>Models</h2>", _html_table(*_MODEL_COLS, models),
             "<h2>Dataset checks</h2>", "<ul>" + "".join(f"<li>{e(x)}</li>" for x in checks) + "</ul>",
             "<h2>Figures</h2>"]
    for caption, p in plots.items():
        parts.append(f"<figure><img src=\"{_data_uri(p)}\" alt=\"{e(caption)}\">"
                     f"<figcaption>{e(caption)} <span class=\"muted\">({e(p.name)})</span></figcaption></figure>")
    parts += ["<h2>Run time per rule</h2>",
              _html_table(*_BENCH_COLS, bench, numeric={"jobs", "total_s", "max_s"}) if bench
              else "<p class=\"muted\">no benchmark files found</p>",
              "<h2>Config and versions</h2>",
              _html_table(["", ""], ["k", "v"], [{"k": k, "v": v} for k, v in meta.items()]),
              f"<pre>{e(config_yaml)}</pre>", "</body>\n</html>\n"]

    md_dir = md_path.parent
    md = [f"# {title}", "", headline, "", "## Numbers", "", _md_table(*_RESULT_COLS, results), "",
          "## Models", "", _md_table(*_MODEL_COLS, models), "",
          "## Dataset checks", "", *[f"- {x}" for x in checks], "", "## Figures", ""]
    for caption, p in plots.items():
        rel = Path(os.path.relpath(p.resolve(), md_dir.resolve())).as_posix()
        md += [f"**{caption}**", "", f"![{caption}]({rel})", ""]
    md += ["## Run time per rule", "", _md_table(*_BENCH_COLS, bench) if bench else "no benchmark files found", "",
           "## Config and versions", "", _md_table(["", ""], ["k", "v"], [{"k": k, "v": v} for k, v in meta.items()]),
           "", "```yaml", config_yaml.rstrip("\n"), "```", ""]

    with atomic_path(html_path) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    with atomic_path(md_path) as tmp:
        tmp.write_text("\n".join(md), encoding="utf-8")
    return {"results": results, "models": models, "benchmarks": bench, "config_hash": chash, "versions": vers}


# --------------------------------------------------------------------------- two runs side by side


def read_numbers(md_path) -> tuple[str, list[dict]]:
    """The headline and the Numbers rows (by _RESULT_COLS' keys) of a report.md that write_report wrote."""
    path = Path(md_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no report (run the workflow to its report first)")
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        start = lines.index("## Numbers")
    except ValueError:
        raise ValueError(f"{path}: no '## Numbers' section: not a locseg report") from None
    headline = next((x for x in lines[1:start] if x.strip()), "")
    end = next((i for i, x in enumerate(lines[start + 1:]) if x.startswith("## ")), len(lines))
    table = [x for x in lines[start + 1:start + 1 + end] if x.startswith("|")][2:]  # after header and rule
    rows = []
    for line in table:
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        rows.append(dict(zip(_RESULT_COLS[1], cells)))
    return headline, rows


def compare_reports(run_a, run_b) -> str:
    """Markdown: the Numbers tables of two runs (their `outdir`s) next to each other, row by row (figure and
    split); a row only one run has shows n/a for the other."""
    (head_a, rows_a), (head_b, rows_b) = (read_numbers(Path(r) / "report.md") for r in (run_a, run_b))
    by_b = {(r["what"], r["split"]): r for r in rows_b}
    keys = [(r["what"], r["split"]) for r in rows_a]
    keys += [k for k in by_b if k not in set(keys)]
    by_a = {(r["what"], r["split"]): r for r in rows_a}
    none = {"miou": NA, "note": ""}
    rows = [{"what": what, "split": split, "a": by_a.get((what, split), none)["miou"],
             "b": by_b.get((what, split), none)["miou"], "note_a": by_a.get((what, split), none)["note"],
             "note_b": by_b.get((what, split), none)["note"]} for what, split in keys]
    table = _md_table(["figure", "split", "A mIoU (%)", "B mIoU (%)", "A note", "B note"],
                      ["what", "split", "a", "b", "note_a", "note_b"], rows)
    return f"A: {run_a}: {head_a}\nB: {run_b}: {head_b}\n\n{table}\n"
