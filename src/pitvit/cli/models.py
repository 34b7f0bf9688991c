"""`pitvit models`: the model zoo table."""
from __future__ import annotations

from pitvit.utils.names import ZOO_FORMATS


def add_parser(sub, formatter) -> None:
    p = sub.add_parser("models", formatter_class=formatter, help="list the registered PiT variants",
                       description="List the registered PiT variants with their size and published accuracy.")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter on the names, e.g. 'pit_s*'")
    p.add_argument("--format", choices=ZOO_FORMATS, default="table", help="output format")
    p.set_defaults(func=run)


def run(args) -> int:
    from pitvit.tools.zoo import format_zoo, zoo_rows

    print(format_zoo(zoo_rows(args.pattern), args.format))
    return 0
