"""publisher.py: upload images as processing requests, or download finished requests (one CLI, two modules).

Upload (publishing/upload.py): one ProcessingRequest per image, published persistent to the first stage's
queue, counted only when the broker confirmed it; files over the broker's maximum message size are refused
one by one, and every file not uploaded is named.  Download (publishing/download.py): the output queue into
one folder per request, acked only once on disk.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from pero_worker.libs.config import add_connection_arguments
from pero_worker.libs.exit_codes import ExitCode
from pero_worker.libs.message_size import parse_byte_size
from pero_worker.tools.cli import EXIT_CODES_HELP, CliError, add_debug_argument, run_main
from pero_worker.tools.publishing.download import download
from pero_worker.tools.publishing.upload import upload

MAX_MESSAGE_SIZE_ENV = "PERO_MAX_MESSAGE_SIZE"


# --- command line -----------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="publisher.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""Upload images for processing, or download the processed requests.

upload:    --stages S1 [S2 ...] out  (--images FILE ... | --directory DIR)  [-y PRIORITY]
  One request per image, sent to the queue of the first stage; the last stage is the output
  stage you download from. Every stage queue must exist (stage_config_manager.py --name STAGE).
  A file over the broker's maximum message size is refused (one line naming it and the limit)
  and the others go on; the limit is --max-message-size, else learnt from the broker (its
  version's default, read from the management API, or the limit it names when it refuses a
  message). Every file not uploaded is named at the end, with the reason.
  Exit code 1 when any file was not uploaded (unreadable, too large, refused by the broker).

download:  --download out --directory DIR [--keep-running]
  Writes DIR/<image name>_<short uuid>/ per request: every result file, request_info.txt
  (uuid, page uuid, priority, start time, stages and their statuses) and <stage>.log per stage.
  Result names are sanitised: nothing is ever written outside DIR. Requests already downloaded
  (by uuid, remembered in DIR/.pero_downloaded.sqlite3) are skipped. Symbolic links in DIR are
  never followed (a request whose folder name is taken by one gets the next free name).
  Without --keep-running it stops when the queue is empty; with it, it waits for more until Ctrl-C.
  When the broker's connection drops it reconnects to the first broker of the server list that
  answers (for 60 s, else exit 3); requests stored but not acknowledged come again and are skipped.
""",
        epilog=EXIT_CODES_HELP,
    )
    add_connection_arguments(parser)
    parser.add_argument("-t", "--stages", nargs="+", metavar="STAGE",
                        help="processing stages of the uploaded requests, output stage last")
    parser.add_argument("-i", "--images", nargs="+", default=[], metavar="FILE", help="images to upload")
    parser.add_argument("-r", "--directory", metavar="DIR",
                        help="upload: every file in DIR (not recursive, hidden files skipped); "
                             "download: where to write results (created if missing)")
    parser.add_argument("-y", "--priority", type=int, default=0, help="request priority (0 or 1, default 0)")
    parser.add_argument("-d", "--download", metavar="QUEUE", help="output stage (queue) to download from")
    parser.add_argument("-k", "--keep-running", action="store_true",
                        help="download: keep waiting for new requests until Ctrl-C")
    parser.add_argument("--idle-timeout", type=float, default=2.0, metavar="SECONDS",
                        help="download: stop after the queue has been empty this long (default 2)")
    parser.add_argument("--max-message-size", type=_byte_size, metavar="BYTES",
                        default=os.environ.get(MAX_MESSAGE_SIZE_ENV) or None,
                        help="upload: the broker's max_message_size, when it is not the default of its version "
                             f"(bytes, or e.g. 256MiB; default ${MAX_MESSAGE_SIZE_ENV}, else read from the broker)")
    parser.add_argument("--manifest", metavar="FILE",
                        help="upload: append one JSON line per uploaded file to FILE: "
                             '{"uuid": ..., "page_uuid": ..., "file": ...} (find a file\'s results by uuid)')
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug_argument(parser)
    return parser


def _byte_size(text: str) -> int:
    try:
        return parse_byte_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _run(args: argparse.Namespace) -> int:
    if bool(args.download) == bool(args.stages):
        raise CliError("give either --stages ... (upload) or --download QUEUE (download); see --help", ExitCode.USAGE)
    if args.download:
        if not args.directory:
            raise CliError("--download needs --directory DIR", ExitCode.USAGE)
        if args.images:
            raise CliError("--images only works with --stages (upload)", ExitCode.USAGE)
        if args.manifest:
            raise CliError("--manifest only works with --stages (upload)", ExitCode.USAGE)
        return download(args)
    if args.keep_running:
        raise CliError("--keep-running only works with --download", ExitCode.USAGE)
    return upload(args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_run, build_parser(), argv)

