"""``toto-convert``: move trajectories between a Zarr store and a LeRobotDataset v3 directory.

    toto-convert export demos.zarr demos_lerobot [--images video|png] [--fps N] [--verify]
    toto-convert import demos_lerobot demos.zarr [--zarr-format 2|3]

``--verify`` re-imports the exported dataset into a temporary store and prints, per key, the
largest absolute difference (0 for low-dimensional keys) and the PSNR of the images. Exit status as for
every command (toto_robot/commands/entry.py): 0 done, 2 bad input (one line on stderr); a failed export or
import leaves no output behind.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from toto_robot.commands.entry import EXIT_BAD_INPUT, EXIT_OK, one_line
from toto_robot.lerobot_io import compare_stores, export_lerobot, import_lerobot
from toto_robot.store import TrajectoryStore


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toto-convert", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    export = sub.add_parser("export", help="Zarr store -> new LeRobotDataset v3 directory")
    export.add_argument("store", type=Path, help="trajectory store (.zarr directory)")
    export.add_argument("out_dir", type=Path, help="LeRobot dataset directory to create")
    export.add_argument(
        "--repo-id", default=None, help="dataset id in the metadata (default local/<out_dir>)"
    )
    export.add_argument("--fps", type=int, default=None, help="frame rate (default: the store's fps)")
    export.add_argument(
        "--images", choices=["video", "png"], default="video", help="mp4 video (lossy) or PNG (lossless)"
    )
    export.add_argument("--verify", action="store_true", help="re-import and report differences and PSNR")

    imp = sub.add_parser("import", help="LeRobotDataset v3 directory -> new Zarr store")
    imp.add_argument("lerobot_dir", type=Path, help="local LeRobot dataset directory")
    imp.add_argument("store", type=Path, help="trajectory store to create")
    imp.add_argument("--repo-id", default=None, help="dataset id (default local/<lerobot_dir>)")
    imp.add_argument("--zarr-format", type=int, choices=[2, 3], default=2)

    for command in (export, imp):
        command.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            store = TrajectoryStore.open(args.store, mode="r")
            out = export_lerobot(
                store,
                args.out_dir,
                repo_id=args.repo_id,
                fps=args.fps,
                use_videos=args.images == "video",
                progress=not args.quiet,
            )
            print(f"wrote {store.n_episodes} episodes ({store.n_steps} steps) to {out}")
            if args.verify:
                with tempfile.TemporaryDirectory() as tmp:
                    back = import_lerobot(out, Path(tmp) / "verify.zarr", progress=not args.quiet)
                    for key, entry in compare_stores(store, back).items():
                        print(
                            f"  {key}: " + ", ".join(f"{name} {value:.4g}" for name, value in entry.items())
                        )
        else:
            store = import_lerobot(
                args.lerobot_dir,
                args.store,
                repo_id=args.repo_id,
                zarr_format=args.zarr_format,
                progress=not args.quiet,
            )
            print(f"wrote {store.n_episodes} episodes ({store.n_steps} steps) to {store.path}")
    except (ValueError, FileExistsError, FileNotFoundError, NotADirectoryError, KeyError) as exc:
        print(f"toto-convert: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
