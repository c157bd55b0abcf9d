"""``napari-sparse-unet export``: a trained model as a bioimage.io model package."""

from __future__ import annotations

import argparse
from typing import Any

from .channels import read_image
from .common import add_command, add_common, add_model_and_image, set_threads


def cmd_export(args: argparse.Namespace) -> int:
    from ..bioimageio.export import export_model

    set_threads(args)
    image, _, _ = read_image(args.image, lazy=True, key=args.key)
    summary = export_model(
        args.model, args.out, image, name=args.name, authors=args.author or (), license=args.license,
        run_test=False if args.no_test else None,
    )
    checked = "tested with bioimageio.core" if summary.status == "passed" else "validated with bioimageio.spec"
    print(f"wrote {args.out} (bioimage.io model package, {checked}: {summary.status})")
    return 0


def add_parser(commands: Any) -> None:
    export = add_command(
        commands, "export", "write a trained model as a bioimage.io model package (.zip)",
        "Write a trained model as a bioimage.io model package: TorchScript weights (normalisation, "
        "halo and U-Net inside), a test input cropped from --image and its output, a README. It is "
        "validated with bioimageio.spec (and tested with bioimageio.core when installed); "
        "'predict --model' and the widget load it back.",
    )
    add_model_and_image(export, "an image like the training images (e.g. one of them), or its channel files A,B,...; "
                        "its centre is the test input")
    export.add_argument("--out", required=True, metavar="OUT.zip", help="the package to write")
    export.add_argument("--name", help="model name, at least 5 characters (default: OUT's file name)")
    export.add_argument("--author", action="append", metavar="NAME", help="an author's name; repeat for several (default: your login name)")
    export.add_argument("--license", default="CC-BY-4.0", metavar="SPDX", help="license of the weights, an SPDX id (default: CC-BY-4.0)")
    export.add_argument("--no-test", action="store_true", help="skip bioimageio.core's test run even when it is installed")
    add_common(export, cmd_export)
