"""``python -m factorseg.nnunet install|uninstall|path``: make nnU-Net find factorseg's trainers."""

from __future__ import annotations

import argparse
import sys

from factorseg.errors import InputError
from factorseg.nnunet import TRAINERS, ext_trainer_dir, install, uninstall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m factorseg.nnunet",
        description="Make nnU-Net v2 find factorseg's trainers (" + ", ".join(TRAINERS) + ").",
        epilog="example: python -m factorseg.nnunet install && nnUNetv2_train 1 3d_fullres 0 -tr nnUNetTrainerFactorizer",
    )
    parser.add_argument(
        "action", choices=("install", "uninstall", "path"),
        help="install: write a one-import module into nnU-Net's trainer folder; uninstall: remove it; "
        "path: print the folder to put in nnUNet_extTrainer instead",
    )
    args = parser.parse_args(argv)
    try:
        if args.action == "install":
            print(f"wrote {install()}")
        elif args.action == "uninstall":
            print("removed" if uninstall() else "nothing to remove")
        else:
            print(ext_trainer_dir())
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
