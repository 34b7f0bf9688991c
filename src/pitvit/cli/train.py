"""`pitvit train`: train a PiT from a recipe; the same command runs under torchrun for DDP."""
from __future__ import annotations

EPILOG = """examples:
  pitvit train --list-configs
  pitvit train --config pit_ti --data /data/imagenet --output runs/pit_ti
  pitvit train --config demo --set train.epochs=2 --set ema.enabled=false
  pitvit train --config my_recipe.yaml     (a file of your own; its base: may name a shipped recipe)
  torchrun --nproc_per_node=8 -m pitvit train --config pit_ti --data /data/imagenet
  (rerunning a command into a folder that holds last.pt continues that run)"""


def add_parser(sub, formatter) -> None:
    p = sub.add_parser("train", formatter_class=formatter, help="train a model from a YAML recipe",
                       description="Train a PiT: typed defaults, then the recipe, then --set overrides. "
                                   "Under torchrun the same command trains with DDP.", epilog=EPILOG)
    p.add_argument("--config", "-c", metavar="RECIPE",
                   help="a shipped recipe's name (see --list-configs) or the path of a YAML recipe; "
                        "default: the built-in defaults%(default).0s")
    p.add_argument("--list-configs", action="store_true", help="list the shipped recipes and exit")
    p.add_argument("--data", help="dataset folder (sets data.path; default: the recipe's)%(default).0s")
    p.add_argument("--output", "-o", help="run folder (sets train.output; default runs/<recipe name>)%(default).0s")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. optim.lr=1e-3 (repeatable; values parsed as YAML)")
    p.add_argument("--resume", action="store_true",
                   help="require last.pt in the run folder and continue from it (the default when it exists)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run)


def run(args) -> int:
    import yaml

    from pitvit.train.config import config_to_dict
    from pitvit.train.recipes import load_config, recipe_summaries

    if args.list_configs:
        recipes = recipe_summaries()
        width = max(map(len, recipes))
        for name, summary in recipes.items():
            print(f"{name:<{width}}  {summary}")
        return 0
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.path={args.data}")
    if args.output:
        overrides.append(f"train.output={args.output}")
    cfg = load_config(args.config, overrides)
    if args.print_config:
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    from pitvit.train.runner import fit

    fit(cfg, require_resume=args.resume)  # stopped by SIGTERM or done: both exit cleanly
    return 0
