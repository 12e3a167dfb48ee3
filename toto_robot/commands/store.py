"""``toto-store``: inspect, verify and repair a trajectory store.

    toto-store info STORE      layout, keys with their codecs, episodes, attributes
    toto-store verify STORE    decode every chunk (checking its checksum) and check the lengths
    toto-store repair STORE    cut a torn tail (a writer killed mid-append) back to the last episode

Exit status as for every command (toto_robot/commands/entry.py): 0 when all is well, 2 for bad input
or a store that fails ``verify`` (each problem printed; the summary on stderr) or whose lock another
writer holds too long, 1 for anything unexpected (with its traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from toto_robot.commands.status import EXIT_BAD_INPUT, EXIT_OK, USER_ERRORS
from toto_robot.store import TrajectoryStore, has_checksum


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toto-store", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("info", "layout, keys, codecs, episodes and attributes"),
        ("verify", "decode every chunk, check checksums and lengths against meta/episode_ends"),
        ("repair", "cut arrays longer than episode_ends[-1] back to the last committed episode"),
    ):
        command = sub.add_parser(name, help=help_text)
        command.add_argument("store", type=Path, help="trajectory store (.zarr directory)")
    return parser


def info(store: TrajectoryStore) -> None:
    successes = [store.episode_meta(i)["success"] for i in range(store.n_episodes)]
    print(f"{store.path}: zarr format {store.zarr_format}, {store.n_episodes} episodes, {store.n_steps} steps, "
          f"{sum(s is True for s in successes)} successful")
    for key, (shape, dtype) in store.schema.items():
        array = store.array(key)
        codecs = " > ".join(type(c).__name__ for c in (*array.filters, *array.compressors))
        print(f"  {key}: {shape} {dtype.name}, {array.chunks[0]} steps a chunk, {codecs}"
              + ("" if has_checksum(array) else " (no checksum)"))
    print(f"  attrs: {json.dumps(store.attrs)}")


def verify(store: TrajectoryStore) -> int:
    report = store.verify()
    for note in report.notes:
        print(f"  note: {note}")
    for problem in report.problems:
        print(f"  problem: {problem}")
    if report.problems:
        print(f"toto-store: verify failed: {len(report.problems)} problems in {store.path}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{store.path}: ok, {report.chunks} chunks decode, {store.n_episodes} episodes agree with "
          "meta/episode_ends")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # a bad command line exits with status 2
    try:
        if args.command == "repair":
            store = TrajectoryStore.open(args.store, mode="a")  # opening for appending repairs
            for change in store.repairs:
                print(f"  {change}")
            print(f"{store.path}: {'repaired' if store.repairs else 'nothing to repair'}, {store.n_episodes} "
                  f"episodes, {store.n_steps} steps")
            return EXIT_OK
        store = TrajectoryStore.open(args.store, mode="r")
        if args.command == "info":
            info(store)
            return EXIT_OK
        return verify(store)
    except USER_ERRORS as exc:
        print(f"toto-store: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
