"""``toto-results``: the behavior-cloning records under ``results/`` as one table and one plot.

    toto-results results/bc/can100-v6                       markdown table on stdout
    toto-results results/bc/can100-v6 --plot can.png        and a bar plot with 95% intervals
    toto-results results/bc --task PickPlaceCan --policy 'cnn_aug' --policy 'toto_flat_multi_*' --markdown can.md

Records of one task and policy name (the ``policy`` field, which a run can rename with ``policy.name=``) are one
row: each BC seed's success, their mean, and the Wilson interval of all their episodes pooled. Only records that
`toto-train-bc` and `toto-demo` write (with ``success_rate`` and ``n_episodes``) are read; other JSON in the
folders (probes, comparisons) is skipped and counted. Exit status as every command: 2 for bad input.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from toto_robot.commands.status import EXIT_BAD_INPUT, EXIT_OK, USER_ERRORS
from toto_robot.report import markdown_table, save_intervals
from toto_robot.results import wilson_interval


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toto-results", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="results records (.json) or folders of them")
    parser.add_argument("--task", help="only records of this task")
    parser.add_argument("--policy", action="append", default=[], metavar="PATTERN",
                        help="only policies whose name matches this shell pattern (repeatable), e.g. 'cnn*'")
    parser.add_argument("--plot", type=Path, help="write a bar plot (png) of the rows here")
    parser.add_argument("--markdown", type=Path, help="write the table here as well as to stdout")
    return parser


def read_records(paths: list[Path]) -> tuple[list[dict[str, Any]], int]:
    """The BC records under `paths` (files, or folders searched recursively) and the count of other JSON."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(path.rglob("*.json"))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"results: {path} does not exist (expected a .json record or a folder of them)")
    records, skipped = [], 0
    for f in files:
        try:
            record = json.loads(f.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"results: {f} is not JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(record, dict) or "success_rate" not in record or "n_episodes" not in record:
            skipped += 1
            continue
        rate, n = record["success_rate"], record["n_episodes"]
        if not (isinstance(n, int) and n > 0 and isinstance(rate, int | float) and 0.0 <= rate <= 1.0):
            raise ValueError(f"results: {f} has success_rate {rate!r} and n_episodes {n!r} "
                             f"(expected a rate in [0, 1] over a positive number of episodes)")
        records.append({**record, "_file": str(f)})
    return records, skipped


def rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, policy): seeds in order, their successes, the mean and the pooled interval."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(str(r.get("task")), str(r.get("policy")))].append(r)
    out = []
    for (task, policy), group in sorted(groups.items()):
        group.sort(key=lambda r: (r.get("bc_seed") is None, r.get("bc_seed") or 0))
        successes = sum(round(r["success_rate"] * r["n_episodes"]) for r in group)
        episodes = sum(r["n_episodes"] for r in group)
        first = group[0]
        out.append({
            "task": task, "policy": policy, "encoder": first.get("encoder"), "preset": first.get("preset"),
            "seeds": [r.get("bc_seed") for r in group], "success": [r["success_rate"] for r in group],
            "mean": sum(r["success_rate"] for r in group) / len(group), "episodes": episodes,
            "ci95": wilson_interval(successes, episodes),
            "folders": sorted({str(Path(r["_file"]).parent) for r in group}),
        })
    return out


def markdown(table: list[dict[str, Any]]) -> str:
    def cells(row: dict[str, Any]) -> dict[str, str]:
        lo, hi = row["ci95"]
        encoder = row["encoder"] + (f" ({row['preset']})" if row["preset"] else "") if row["encoder"] else "-"
        return {"task": row["task"], "policy": f"`{row['policy']}`", "encoder": encoder,
                "BC seeds": ", ".join(map(str, row["seeds"])),
                "success per seed": " / ".join(f"{s:.0%}" for s in row["success"]), "mean": f"**{row['mean']:.0%}**",
                "95% CI (pooled)": f"{lo:.0%}-{hi:.0%} ({row['episodes']} episodes)",
                "records": ", ".join(f"`{f}`" for f in row["folders"])}

    return markdown_table([cells(row) for row in table]) + "\n"


def plot(table: list[dict[str, Any]], path: Path) -> Path:
    """Horizontal bars (mean over seeds) with the pooled 95% interval, each seed a dot; Toto encoders in blue."""
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = [f"{r['task']} {r['policy']}" for r in table]
    return save_intervals(path, [(label, r["mean"], r["ci95"], r["success"]) for label, r in zip(labels, table)],
                          "success rate", "bar: mean over BC seeds, line: pooled 95% Wilson interval, dots: seeds",
                          highlight={label for label, r in zip(labels, table) if r["encoder"] in ("toto", "toto_random")})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # a bad command line exits with status 2
    try:
        records, skipped = read_records(args.paths)
        if args.task:
            records = [r for r in records if r.get("task") == args.task]
        if args.policy:
            records = [r for r in records if any(fnmatch.fnmatchcase(str(r.get("policy")), p) for p in args.policy)]
        if not records:
            wanted = (f" of task {args.task}" if args.task else "") + (f" of policies {args.policy}" if args.policy else "")
            raise ValueError(f"results: no behavior-cloning records{wanted} "
                             f"under {', '.join(map(str, args.paths))} (expected JSON with success_rate and "
                             f"n_episodes; {skipped} other JSON files skipped)")
        table = rows(records)
        text = markdown(table)
        print(text, end="")
        print(f"{len(records)} records, {len(table)} rows; {skipped} other JSON files skipped", file=sys.stderr)
        if args.markdown:
            args.markdown.parent.mkdir(parents=True, exist_ok=True)
            args.markdown.write_text(text)
        if args.plot:
            print(f"plot: {plot(table, args.plot)}", file=sys.stderr)
        return EXIT_OK
    except USER_ERRORS as exc:
        print(f"toto-results: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
