"""``spa-opt report REPORT.json -o FILE.html``: a saved run report as an HTML page.

The same page ``--report-html`` writes during a run, from a ``--report`` JSON written
before (by this or an earlier version: keys a report lacks leave their section out).
Exit codes as for a run: 2 with one line for a file that cannot be read or is not a
spa-opt report, or an output that cannot be written; nothing is written then.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spa_opt.cli_support import Parser, check_side_file, stage
from spa_opt.errors import InputError

#: Keys every spa-opt run report has (spa_opt/report.py); a file without them is not one.
REQUIRED = ("spa_opt_version", "pipeline", "passes", "params", "flops")


def load_report(path: str) -> dict[str, Any]:
    """The report dictionary, or a one-line error naming the file and what is wrong."""
    try:
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
    except FileNotFoundError:
        raise InputError(f"cannot read report '{path}': no such file") from None
    except IsADirectoryError:
        raise InputError(f"cannot read report '{path}': it is a folder") from None
    except OSError as error:
        raise InputError(f"cannot read report '{path}': {error.strerror or error}") from None
    except (UnicodeDecodeError, ValueError) as error:  # JSONDecodeError, too many digits
        raise InputError(f"cannot read report '{path}': not JSON ({error})") from None
    except RecursionError:
        raise InputError(f"cannot read report '{path}': nested too deeply") from None
    if not isinstance(data, dict):
        raise InputError(f"'{path}' is not a spa-opt run report: not a JSON object")
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise InputError(f"'{path}' is not a spa-opt run report: no '{missing[0]}' "
                         "(write one with spa-opt --report FILE.json)")
    return data


def run_report(argv: Sequence[str]) -> int:
    """Parse the subcommand's arguments, render and write the page; returns 0."""
    from spa_opt.report_html import render_html

    parser = Parser(prog="spa-opt report", allow_abbrev=False,
                    description="Render a run report (spa-opt --report FILE.json) as one "
                                "self-contained HTML page.")
    parser.add_argument("report", metavar="REPORT.json")
    parser.add_argument("-o", "--output", metavar="FILE.html", required=True,
                        help="the page to write")
    parser.add_argument("--title", help="the page's heading (default: the report's file name)")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of an error (as spa-opt --debug does)")
    args = parser.parse_args(list(argv))
    report = load_report(args.report)
    check_side_file(args.output, set(), "page")
    if Path(args.output).resolve() == Path(args.report).resolve():
        raise InputError(f"refused to write page '{args.output}': it is the report it is "
                         "made from")
    try:
        page = render_html(report, title=args.title or Path(args.report).stem)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError,
            OverflowError) as error:
        # A report edited by hand, or from another tool: name the file, not a traceback.
        raise InputError(f"'{args.report}' is not a readable spa-opt run report: "
                         f"{type(error).__name__} {error}") from None
    staged = stage(Path(args.output), page, "page")
    try:
        mask = os.umask(0)  # mkstemp makes the file 0600; a page is as readable as any file
        os.umask(mask)
        os.chmod(staged, 0o666 & ~mask)
        os.replace(staged, args.output)
    except OSError as error:
        raise InputError(f"cannot write '{args.output}': {error.strerror or error}") from None
    finally:
        staged.unlink(missing_ok=True)
    return 0
