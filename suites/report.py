"""A suite tier's report: ``results.json``, ``results.md`` and plots, made from its summaries only
(never from run folders), so a report is re-made the same on any machine from what is committed.

Per cell (task x method): each seed's score (the mean of its last ``score_last`` evaluations in
its final phase), their IQM with a 95 % stratified-bootstrap interval, the mean, the score at the
end of pretraining, the published reference with its provenance and whether its protocol matches
this tier's, and the compute (wall-clock per run, steps per second, the device). Across tasks: the
IQM per method and the probability that each method beats the suite's ``compare_to`` method. The
verdict (a suite whose methods name a ``control``): a method fine-tunes on a task only if its final
interval lies wholly above its own offline-only control's and above each ``verdict_against``
method's (e.g. RLPD and SAC from scratch at as many online steps). Plots: learning curves (IQM
over seeds with its interval as a band) per task, and the probabilities of improvement.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rlft.runtime.plotting import plot_band_curves, plot_band_panels, plot_interval_bars
from rlft.runtime.run_folder import strict_json
from rlft.suites import stats, store
from rlft.suites.spec import Job, Reference, Suite, suites_dir

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"


def scale(metric: str) -> tuple[float, str]:
    """Reports show success rates in %: (factor, unit) for ``metric``."""
    return (100.0, "success %") if metric == "success_rate" else (1.0, metric.replace("_", " "))


def run_score(summary: dict[str, Any], metric: str, last: int) -> float:
    """The run's score: the mean of ``metric`` over its last ``last`` evaluations of its final phase."""
    history = summary["history"]
    final = [r for r in history if r["phase"] == history[-1]["phase"]]
    values = [r[metric] for r in final[-last:] if r.get(metric) is not None]
    return float(np.mean(values)) if values else float("nan")


def dip(summary: dict[str, Any], metric: str, window: int) -> float:
    """How far the run's score fell below its start (the end of pretraining) within ``window``
    steps of fine-tuning: start - min(score), 0 when it never fell (WSRL's and Cal-QL's "dip")."""
    before = summary.get("before")
    if not before or before.get(metric) is None:
        return float("nan")
    start_step, start = before["step"], before[metric]
    early = [r[metric] for r in summary["history"]
             if start_step < r["step"] <= start_step + window and r.get(metric) is not None]
    return max(0.0, start - min(early)) if early else float("nan")


def _own_steps(summary: dict[str, Any]) -> int:
    """Steps the run itself took: a run started from another's checkpoint (init_from) counts from
    that checkpoint's step (its wall-clock excludes the pretraining it loaded)."""
    start = summary["before"]["step"] if summary.get("init_from") and summary.get("before") else 0
    return summary["history"][-1]["step"] - start


def _split_score(summary: dict[str, Any], name: str, metric: str) -> float:
    """The run's final policy on the split ``name`` (NaN when the run did not evaluate it)."""
    value = (summary.get("splits") or {}).get(name, {}).get(metric)
    return float("nan") if value is None else float(value)


def start_score(summary: dict[str, Any], metric: str) -> float:
    """The score at the end of pretraining (NaN for a run without pretraining)."""
    before = summary.get("before")
    value = before.get(metric) if before else None
    return float("nan") if value is None else float(value)


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def cell_statistics(values: Sequence[float]) -> dict[str, Any]:
    """IQM, its 95 % bootstrap interval over seeds, mean and the values themselves."""
    finite = _finite(values)
    if not finite:
        return {"n": 0, "per_seed": list(values), "iqm": None, "ci": [None, None], "mean": None}
    low, high = stats.bootstrap_ci([finite])
    return {"n": len(finite), "per_seed": list(values), "iqm": float(stats.iqm(finite)),
            "ci": [None if math.isnan(low) else low, None if math.isnan(high) else high],
            "mean": float(np.mean(finite))}


def protocol_values(suite: Suite, summaries: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Each protocol entry's value over the runs (``a | b`` when runs differ, e.g. per task)."""
    out = {}
    for name, key in suite.protocol.items():
        if isinstance(key, dict):
            out[name] = _text(key["value"])
            continue
        seen: list[str] = []
        keys = [key] if isinstance(key, str) else key
        for summary in summaries:
            text = _text(next((v for k in keys if (v := store.config_value(summary, k)) is not None), None))
            if text not in seen:
                seen.append(text)
        out[name] = " | ".join(seen) if seen else "-"
    return out


def _text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return "-".join(str(v) for v in value)
    if isinstance(value, dict):  # e.g. a tiny model's shape
        return "{" + ", ".join(f"{key}: {_text(item)}" for key, item in value.items()) + "}"
    return str(value)


def reference_match(reference: Reference, protocol: dict[str, str]) -> tuple[bool, str]:
    """Whether the reference was measured at this cell's protocol: every protocol entry of the
    suite stated by the reference and equal. Returns (matches, the first differences)."""
    differences = []
    for name, ours in protocol.items():
        theirs = reference.protocol.get(name)
        if theirs is None:
            differences.append(f"{name}: not stated")
        elif _text(theirs) != ours:
            differences.append(f"{name}: {_text(theirs)} vs {ours}")
    return not differences, "; ".join(differences[:3]) + (" ..." if len(differences) > 3 else "")


# ------------------------------------------------------------------------------------------- report
def build_results(suite: Suite, tier: str, folder: Path, jobs: Sequence[Job]) -> dict[str, Any]:
    """The report's content, from the summaries in ``folder``."""
    factor, unit = scale(suite.metric)
    summaries: dict[str, dict[str, Any]] = {}
    for job in jobs:
        summary = store.read_summary(folder, job)
        if summary is not None:
            summaries[job.key] = summary
    tasks = list(dict.fromkeys(job.task for job in jobs))
    methods = list(dict.fromkeys(job.method for job in jobs))
    cells: dict[str, dict[str, Any]] = {}
    for task in tasks:
        cells[task] = {}
        task_summaries = [s for j in jobs if j.task == task and (s := summaries.get(j.key))]
        protocol = protocol_values(suite, task_summaries)
        for method in methods:
            cell_jobs = [j for j in jobs if j.task == task and j.method == method]
            if not cell_jobs:  # a method that runs on some tasks only
                continue
            done = [summaries[j.key] for j in cell_jobs if j.key in summaries]
            scores = [factor * run_score(s, suite.metric, suite.score_last) for s in done]
            starts = [factor * start_score(s, suite.metric) for s in done]
            compute = [s.get("compute") or {} for s in done]
            walls = [c.get("wall_seconds") or 0.0 for c in compute]
            steps = [_own_steps(s) for s in done]
            rates = [n / w for n, w in zip(steps, walls) if w > 0 and n > 0]
            references = [_reference_record(r, protocol_values(suite, done))
                          for r in suite.references if r.task == task and r.method == method]
            cells[task][method] = {
                "label": suite.methods[method].title, "baseline": suite.methods[method].baseline,
                "seeds": [s["seed"] for s in done], "runs": f"{len(done)}/{len(cell_jobs)}",
                "score": cell_statistics(scores), "start": cell_statistics(starts),
                "splits": {name: cell_statistics([factor * _split_score(s, name, suite.metric) for s in done])
                           for name in suite.splits},
                "dip": cell_statistics([factor * dip(s, suite.metric, suite.dip_window) for s in done])
                if suite.dip_window else None,
                "references": references,
                "compute": {"wall_minutes_mean": float(np.mean(walls)) / 60 if walls else None,
                            "steps_per_second": float(np.mean(rates)) if rates else None,
                            "devices": sorted({c.get("device", "?") for c in compute})},
            }
        # a run states its data's score in its own plotted metric, which may not be the suite's
        with_data = [s for s in task_summaries if s.get("reference_score") and s["reference_score"].get("value")
                     is not None]
        data_scores = {scale(s["metric"])[0] * s["reference_score"]["value"] for s in with_data}
        labels = {s["reference_score"]["label"] + ("" if s["metric"] == suite.metric else f", {scale(s['metric'])[1]}")
                  for s in with_data}
        for method in methods:
            if method in cells[task] and suite.methods[method].control:
                cells[task][method]["verdict"] = verdict(cells[task], method, suite.methods[method].control,
                                                         suite.verdict_against)
        cells[task]["_task"] = {"protocol": protocol, "axis": task_summaries[0]["axis"] if task_summaries else "",
                                "data_score": {"label": ", ".join(sorted(labels)), "value": min(data_scores)}
                                if len(data_scores) == 1 else None}
    return {
        "suite": suite.name, "tier": tier, "description": suite.description, "metric": suite.metric, "unit": unit,
        "score_rule": f"mean of the last {suite.score_last} evaluation(s) of each run's final phase",
        "splits": list(suite.splits),
        "dip_window": suite.dip_window,
        "tier_note": suite.tier(tier).note,
        "commands": {"run": command(suite, tier, jobs, folder), "report": command(suite, tier, jobs, folder, "report")},
        "runs_done": f"{len(summaries)}/{len(jobs)}",
        "tasks": cells,
        "across_tasks": _across_tasks(suite, tasks, methods, cells),
        "statistics": f"IQM (25 % trimmed mean) over seeds; {int(stats.CONFIDENCE * 100)} % percentile bootstrap "
                      f"interval, {stats.RESAMPLES} resamples, seeds resampled within each task "
                      f"(scipy.stats.bootstrap); {stats.SMALL_SAMPLE_NOTE}",
    }


def verdict(cells: dict[str, Any], method: str, control: str, against: Sequence[str]) -> dict[str, Any]:
    """Whether ``method`` fine-tunes on this task: its score's interval lies wholly above the
    interval of its ``control`` and of each ``against`` method that ran here. ``passes`` is None
    (not judged) while a bar or the method itself lacks an interval (unfinished, or one seed)."""
    low = cells[method]["score"]["ci"][0]
    bars = {}
    for bar in (control, *against):
        if bar not in cells:
            continue
        high = cells[bar]["score"]["ci"][1]
        bars[bar] = None if low is None or high is None else bool(low > high)
    judged = bars and all(v is not None for v in bars.values())
    return {"bars": bars, "passes": all(bars.values()) if judged else None}


def command(suite: Suite, tier: str, jobs: Sequence[Job], folder: Path, verb: str = "run") -> str:
    """The ``rlft-bench`` command for this tier, these jobs' seeds and this output folder
    (``<out>/<suite>/<tier>``: ``out=`` is named unless it is ``benchmarks`` here)."""
    seeds = sorted({job.seed for job in jobs})
    chosen = suite.tier(tier).seeds or suite.seeds
    extra = "" if tuple(seeds) == tuple(chosen) else f" seeds=[{','.join(map(str, seeds))}]"
    out = folder.parent.parent
    if out.resolve() != Path("benchmarks").resolve():
        extra += f" out={shlex.quote(str(out))}"
    name = suite.name if suite.path.parent == suites_dir() else str(suite.path)
    return f"rlft-bench {verb} {shlex.quote(name)} tier={tier}{extra}"


def _reference_record(reference: Reference, protocol: dict[str, str]) -> dict[str, Any]:
    matches, differences = reference_match(reference, protocol)
    return {"value": reference.value, "spread": reference.spread, "source": reference.source,
            "protocol": reference.protocol, "protocol_matches": matches, "differences": differences,
            "note": reference.note}


def _across_tasks(suite: Suite, tasks: list[str], methods: list[str], cells: dict[str, Any]) -> dict[str, Any]:
    """Per method, the IQM over every (task, seed) run with a stratified interval; and each
    method's probability of improvement over ``suite.compare_to`` (every task must have runs)."""
    versus = suite.compare_to if suite.compare_to in methods else (methods[0] if methods else None)
    out: dict[str, Any] = {"iqm": {}, "probability_of_improvement": {}, "versus": versus, "omitted": []}

    def runs(method: str) -> list[list[float]] | None:
        samples = [_finite(cells[t][method]["score"]["per_seed"]) if method in cells[t] else [] for t in tasks]
        return samples if all(samples) else None

    for method in methods:
        samples = runs(method)
        if not samples:
            out["omitted"].append(method)  # not run (or not finished) on every task
        else:
            low, high = stats.bootstrap_ci(samples)
            out["iqm"][method] = {"iqm": float(stats.iqm(np.concatenate(samples))),
                                  "ci": [None if math.isnan(low) else low, None if math.isnan(high) else high]}
    first = runs(versus) if versus else None
    for method in methods:
        samples = runs(method) if method != versus else None
        if first and samples:
            low, high = stats.probability_of_improvement_ci(samples, first)
            out["probability_of_improvement"][method] = {
                "p": stats.probability_of_improvement(samples, first),
                "ci": [None if math.isnan(low) else low, None if math.isnan(high) else high]}
    return out


def _interval(stat: dict[str, Any], digits: int = 1) -> str:
    if stat.get("iqm") is None:
        return "-"
    low, high = stat["ci"]
    ci = f" [{low:.{digits}f}, {high:.{digits}f}]" if low is not None else " (1 seed)"
    return f"{stat['iqm']:.{digits}f}{ci}"


def _label(results: dict[str, Any], method: str) -> str:
    return next(cells[method]["label"] for cells in results["tasks"].values() if method in cells)


def _markdown(results: dict[str, Any], plots: dict[str, str]) -> str:
    lines = [f"# Suite `{results['suite']}`, tier `{results['tier']}`", "", results["description"], "",
             f"- run (skips finished runs, resumes interrupted ones): `{results['commands']['run']}`",
             f"- this report: `{results['commands']['report']}` ({results['runs_done']} runs done)",
             f"- score: {results['unit']}, {results['score_rule']}",
             f"- statistics: {results['statistics']}"]
    if results["tier_note"]:
        lines.append(f"- tier: {results['tier_note']}")
    lines.append("")
    for task, cells in results["tasks"].items():
        info = cells["_task"]
        lines += [f"## {task}", "", "Protocol (read from the runs' configs): " +
                  "; ".join(f"{k} {v}" for k, v in info["protocol"].items()) + ".", ""]
        if info["data_score"]:
            lines += [f"The data's own score ({info['data_score']['label']}): {info['data_score']['value']:.1f}.", ""]
        splits = "".join(f" {name} |" for name in results["splits"])
        if results["dip_window"]:
            splits += f" dip in the first {results['dip_window']} steps |"
        lines += ["| method | runs | start (IQM [95 % CI]) | score (IQM [95 % CI]) | mean | per seed |" + splits +
                  " reference | min / run | steps/s |",
                  "| --- | --- | ---: | ---: | ---: | --- |"
                  + " ---: |" * (len(results["splits"]) + bool(results["dip_window"])) + " --- | ---: | ---: |"]
        for method, cell in cells.items():
            if method == "_task":
                continue
            score = cell["score"]
            per_seed = ", ".join("-" if not math.isfinite(v) else f"{v:.1f}" for v in score["per_seed"])
            refs = "; ".join(f"{r['value']:g}{(' ' + r['spread']) if r['spread'] else ''} ({r['source']}; protocol "
                             f"{'matches' if r['protocol_matches'] else 'differs: ' + r['differences']})"
                             for r in cell["references"]) or "-"
            label = cell["label"] + (f" ({cell['baseline']})" if cell["baseline"] else "")
            compute = cell["compute"]
            minutes = f"{compute['wall_minutes_mean']:.1f}" if compute["wall_minutes_mean"] is not None else "-"
            rate = f"{compute['steps_per_second']:.0f}" if compute["steps_per_second"] is not None else "-"
            mean = f"{score['mean']:.1f}" if score["mean"] is not None else "-"
            split_cells = "".join(f" {_interval(cell['splits'][name])} |" for name in results["splits"])
            if results["dip_window"]:
                split_cells += f" {_interval(cell['dip'])} |"
            lines.append(f"| {label} | {cell['runs']} | {_interval(cell['start'])} | {_interval(score)} | {mean} | "
                         f"{per_seed} |{split_cells} {refs} | {minutes} | {rate} |")
        devices = sorted({d for m, c in cells.items() if m != "_task" for d in c["compute"]["devices"]})
        lines += ["", f"Steps are {info['axis']}; device: {'; '.join(devices) or '-'}.", ""]
        if task in plots:
            lines += [f"![{task}]({plots[task]})", ""]
    lines += _verdict_markdown(results, plots)
    across = results["across_tasks"]
    if across["iqm"]:
        versus = _label(results, across["versus"])
        lines += ["## Across tasks", "",
                  f"| method | IQM over every run [95 % CI] | P(better than {versus}) [95 % CI] |",
                  "| --- | ---: | ---: |"]
        for method, stat in across["iqm"].items():
            poi = across["probability_of_improvement"].get(method)
            poi_text = _interval({"iqm": poi["p"], "ci": poi["ci"]}, 2) if poi else "-"
            lines.append(f"| {_label(results, method)} | {_interval(stat)} | {poi_text} |")
        if across["omitted"]:
            lines.append(f"\nNot in this table (no finished runs on every task): "
                         f"{', '.join(_label(results, m) for m in across['omitted'])}.")
        lines.append("")
        if "_improvement" in plots:
            lines += [f"![probability of improvement]({plots['_improvement']})", ""]
    return "\n".join(lines)


def verdict_word(passes: bool | None) -> str:
    """A verdict in a table cell."""
    return {True: "fine-tunes", False: "no", None: "not judged"}[passes]


def _verdict_markdown(results: dict[str, Any], plots: dict[str, str]) -> list[str]:
    """Per method with a control, per task: does it fine-tune, and which bar stops it."""
    judged = [m for cells in results["tasks"].values() for m, c in cells.items() if m != "_task" and "verdict" in c]
    methods = list(dict.fromkeys(judged))
    if not methods:
        return []
    tasks = list(results["tasks"])
    lines = ["## Verdict: which methods fine-tune", "",
             "A method fine-tunes on a task only if the 95 % interval of its final IQM lies wholly above the interval "
             "of its own offline-only control (its pretrained checkpoint given the same updates on the dataset instead "
             "of online data) and of every method trained without pretraining at as many online steps. A cell names "
             "the bars it does not clear.", "",
             "| method | " + " | ".join(tasks) + " |", "| --- |" + " --- |" * len(tasks)]
    for method in methods:
        row = []
        for task in tasks:
            cell = results["tasks"][task].get(method)
            if not cell or "verdict" not in cell:
                row.append("-")
                continue
            judged_verdict = cell["verdict"]
            failed = [_label(results, bar) for bar, above in judged_verdict["bars"].items() if above is False]
            row.append(verdict_word(judged_verdict["passes"]) + (f" (not above {', '.join(failed)})" if failed else ""))
        lines.append(f"| {_label(results, method)} | " + " | ".join(row) + " |")
    lines.append("")
    for task in tasks:
        if f"{task}/verdict" in plots:
            lines += [f"![{task}: each method against its bars]({plots[f'{task}/verdict']})", ""]
    return lines


def _curves(suite: Suite, folder: Path, jobs: Sequence[Job], task: str, factor: float) -> dict[str, Any]:
    """Per method: (steps, IQM, low, high, seeds) of the metric over seeds on a shared step grid,
    each run's steps counted from the end of its pretraining (negative: pretraining), so methods
    with other pretraining budgets start fine-tuning at the same x."""
    out = {}
    for method in dict.fromkeys(j.method for j in jobs if j.task == task):
        summaries = [s for j in jobs if j.task == task and j.method == method if (s := store.read_summary(folder, j))]
        histories = [[dict(r, step=r["step"] - _pretraining_steps(s)) for r in s["history"]
                      if r.get(suite.metric) is not None] for s in summaries]
        histories = [h for h in histories if h]
        if not histories:
            continue
        grid = np.unique(np.concatenate([[r["step"] for r in h] for h in histories])).astype(float)
        values = np.stack([np.interp(grid, [r["step"] for r in h], [factor * r[suite.metric] for r in h])
                           for h in histories])
        center = stats.iqm(values, axis=0)
        bands = [stats.bootstrap_ci([column]) for column in values.T] if len(histories) > 1 else None
        low = np.array([b[0] for b in bands]) if bands else center
        high = np.array([b[1] for b in bands]) if bands else center
        out[suite.methods[method].title] = (grid, center, low, high, len(histories))
    return out


def _verdict_panels(suite: Suite, curves: dict[str, Any], cells: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per judged method (a panel): its curve, its control's and each ``verdict_against`` method's."""
    panels = {}
    for method, cell in cells.items():
        if method == "_task" or "verdict" not in cell:
            continue
        titles = [suite.methods[m].title for m in (method, *cell["verdict"]["bars"])]
        panel = {title: curves[title] for title in titles if title in curves}
        if suite.methods[method].title in panel:
            panels[f"{suite.methods[method].title}: {verdict_word(cell['verdict']['passes'])}"] = panel
    return panels


def _pretraining_steps(summary: dict[str, Any]) -> int:
    """Where fine-tuning starts on the run's x-axis: its ``before`` record's step (0 without one,
    or for a run that never fine-tunes, e.g. an offline-only run, whose curve keeps its own steps)."""
    before, history = summary.get("before"), summary["history"]
    if not before or not history or history[-1]["step"] <= before["step"]:
        return 0
    return int(before["step"])


def write_report(suite: Suite, tier: str, folder: Path, jobs: Sequence[Job]) -> Path:
    """Write ``results.json``, ``results.md`` and the plots into ``folder``; returns the markdown's path."""
    folder.mkdir(parents=True, exist_ok=True)
    results = build_results(suite, tier, folder, jobs)
    factor, unit = scale(suite.metric)
    plots: dict[str, str] = {}
    for task, cells in results["tasks"].items():
        curves = _curves(suite, folder, jobs, task, factor)
        if curves:
            data = cells["_task"]["data_score"]
            name = f"{task}_curves.png"
            plot_band_curves(curves, folder / name, f"{suite.name} [{tier}] on {task}: IQM over seeds, 95 % CI",
                             xlabel=f"{cells['_task']['axis']}, from the start of fine-tuning", ylabel=unit,
                             hlines={f"the data ({data['label']})": data["value"]} if data else None,
                             vline="fine-tuning starts")
            plots[task] = name
            panels = _verdict_panels(suite, curves, cells)
            if panels:
                name = f"{task}_verdict.png"
                plot_band_panels(panels, folder / name, f"{suite.name} [{tier}] on {task}: each method against its "
                                 "bars (IQM over seeds, 95 % CI)", xlabel=f"{cells['_task']['axis']}, from the start "
                                 "of fine-tuning", ylabel=unit, hlines={"the data": data["value"]} if data else None,
                                 vline="fine-tuning starts")
                plots[f"{task}/verdict"] = name
    poi = results["across_tasks"]["probability_of_improvement"]
    if poi:
        rows = [(suite.methods[m].title, v["p"], v["ci"][0], v["ci"][1]) for m, v in poi.items()]
        versus = suite.methods[results["across_tasks"]["versus"]].title
        plot_interval_bars(rows, folder / "improvement.png", f"P(method beats {versus}) across tasks, 95 % CI",
                           xlabel=f"probability of improvement over {versus}", limits=(0.0, 1.0), marker=0.5)
        plots["_improvement"] = "improvement.png"
    (folder / RESULTS_JSON).write_text(json.dumps(strict_json(results), indent=1, allow_nan=False) + "\n")
    (folder / RESULTS_MD).write_text(_markdown(results, plots) + "\n")
    return folder / RESULTS_MD
