"""The benches' `--network` choice: the line network as pero-ocr loads it, or as the OCR stage runs it on a
CPU (pero_ocr_stage.optimize_for_cpu, float32 or bfloat16), so a figure can be taken both ways."""
from __future__ import annotations

import argparse
import sys
import types
from typing import Any

NETWORKS = ("pero-ocr", "float32", "bfloat16")


def add_network_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--network", choices=NETWORKS, default="pero-ocr",
                        help="the line network as pero-ocr loads it, or frozen for the CPU as the OCR stage runs "
                        "it (pero_ocr_stage.optimize_for_cpu) in float32 or bfloat16")


def use_network(engine: Any, network: str) -> bool:
    """Put the chosen network into pero-ocr's line engine; False (and one line on stderr) when it cannot be."""
    if network == "pero-ocr":
        return True
    from pero_worker.worker.processors.pero_ocr_stage import optimize_for_cpu
    parser = types.SimpleNamespace(ocr=types.SimpleNamespace(ocr_engine=engine))
    if optimize_for_cpu(parser, bfloat16=network == "bfloat16") != network:
        print(f"the network could not be frozen in {network} (see the warning above)", file=sys.stderr)
        return False
    return True
