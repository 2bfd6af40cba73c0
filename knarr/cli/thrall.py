"""``knarr thrall``: recipe firings, dry runs, the recipe list and the delegate key."""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path
from typing import Any

from knarr.config import Config, default_config, load_config
from knarr.errors import ConfigError, StorageError
from knarr.node.economy import to_credits
from knarr.node.identity import Identity
from knarr.node.store import Store


def add_parsers(sub: Any) -> None:
    thrall = sub.add_parser(
        "thrall", help="recipe firings, dry runs and the delegate key",
        description="Thrall runs recipes on the node (enable it with [thrall] enabled = true "
        "in knarr.toml). These commands read the project in the current folder.",
    )
    inner = thrall.add_subparsers(dest="thrall_command", metavar="ACTION", required=True)

    firings = inner.add_parser("firings", help="list recent recipe firings",
                               description="Recent recipe firings from the node database "
                               "(read-only; works beside a running node).")
    firings.add_argument("--storage", default="node.db", help="node database (default: node.db)")
    firings.add_argument("--limit", type=int, default=50, help="how many (default: 50)")
    firings.add_argument("--json", action="store_true", help="print raw JSON")
    firings.set_defaults(run=run_firings, log_level="WARNING")

    test = inner.add_parser(
        "test", help="dry-run a recipe on an event",
        description="Print the path an event would take through a recipe: trigger, filter, "
        "gather, evaluation and action. Nothing is sent, called or recorded.",
    )
    test.add_argument("recipe", metavar="RECIPE", help="a recipe name or a .toml file")
    test.add_argument("--event", required=True, metavar="JSON",
                      help='the event, e.g. \'{"sender": "ab…", "type": "text", "body": "hi"}\''
                      ' (mail), \'{"type": "peer.removed"}\' (event), \'{"peer_count": 0}\' '
                      "(tick)")
    test.add_argument("--config", help="knarr.toml (default: ./knarr.toml if it exists)")
    test.add_argument("--json", action="store_true", help="print raw JSON")
    test.set_defaults(run=run_test, log_level="WARNING")

    recipes = inner.add_parser("recipes", help="list the recipes and what fails to load")
    recipes.add_argument("--config", help="knarr.toml (default: ./knarr.toml if it exists)")
    recipes.add_argument("--json", action="store_true", help="print raw JSON")
    recipes.set_defaults(run=run_recipes, log_level="WARNING")

    issue = inner.add_parser(
        "delegate", help="issue Thrall's delegated settlement key",
        description="Make a new delegate key and certify it with the node identity, so Thrall "
        "can sign netting settlements up to a daily ceiling. Delete the key file (or run "
        "`knarr thrall revoke`) to revoke it here.",
    )
    issue.add_argument("--ceiling", type=float, default=50.0,
                       help="credits the key may pay out per UTC day (default: 50)")
    issue.add_argument("--days", type=float, default=7.0,
                       help="days until the certificate expires (default: 7)")
    issue.add_argument("--storage", default="node.db", help="node database (default: node.db)")
    issue.add_argument("--config", help="knarr.toml (default: ./knarr.toml if it exists)")
    issue.set_defaults(run=run_delegate, log_level="WARNING")

    revoke = inner.add_parser("revoke", help="delete the delegate key file")
    revoke.add_argument("--config", help="knarr.toml (default: ./knarr.toml if it exists)")
    revoke.set_defaults(run=run_revoke, log_level="WARNING")


def _config(path: str | None) -> Config:
    if path:
        return load_config(path)
    if Path("knarr.toml").is_file():
        return load_config("knarr.toml")
    return default_config()


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def firings(store: Store, limit: int) -> list[dict[str, Any]]:
    rows = store.execute(
        "SELECT id, time, event, data FROM journal WHERE kind = 'recipe' ORDER BY id DESC"
        " LIMIT ?", (limit,),
    )
    return [{"id": r[0], "time": r[1], "event": r[2], **json.loads(r[3])} for r in rows]


async def run_firings(args: argparse.Namespace) -> int:
    store = Store(args.storage, readonly=True)
    try:
        rows = firings(store, max(1, args.limit))
    finally:
        store.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("No recipe has fired yet.")
        return 0
    for row in reversed(rows):
        verdict = row.get("verdict", "")
        action = row.get("action", "")
        shown = f"{verdict}→{action}" if verdict and verdict != action else action
        how = row.get("evaluation", row.get("event", ""))
        print(f"{_when(row['time'])}  {row.get('recipe', ''):<20} {how:<10} {shown:<16} "
              f"{row.get('detail', '')}"[:200].rstrip())
    return 0


def _find_recipe(name: str, config: Config) -> tuple[Path, list[Path]]:
    from knarr.recipes.engine import BUNDLED

    folders = ([BUNDLED] if config.thrall.bundled else []) + \
        [config.resolve_path(config.thrall.recipes_dir)]
    path = Path(name)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise ConfigError(f"{name}: no such recipe file")
        return path, [*folders, path.parent]
    for folder in reversed(folders):
        if (folder / f"{name}.toml").is_file():
            return folder / f"{name}.toml", folders
    raise ConfigError(f"no recipe named {name!r} in {', '.join(str(f) for f in folders)}")


async def run_test(args: argparse.Namespace) -> int:
    from knarr.recipes.dryrun import dry_run
    from knarr.recipes.prompts import load_prompts
    from knarr.recipes.recipe import load_recipe

    try:
        event = json.loads(args.event)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--event is not valid JSON: {exc}") from exc
    if not isinstance(event, dict):
        raise ConfigError("--event must be a JSON object")
    config = _config(args.config)
    path, folders = _find_recipe(args.recipe, config)
    prompts, _ = load_prompts([f / "prompts" for f in folders])
    recipe = load_recipe(path, prompts=prompts)
    run = dry_run(recipe, event, config=config.thrall, prompts=prompts)
    if args.json:
        print(json.dumps(run.to_dict(), indent=2))
    else:
        print("\n".join(run.lines()))
    return 0


async def run_recipes(args: argparse.Namespace) -> int:
    from knarr.recipes.engine import BUNDLED
    from knarr.recipes.prompts import load_prompts
    from knarr.recipes.recipe import load_recipes, recipe_files

    config = _config(args.config)
    folders = ([BUNDLED] if config.thrall.bundled else []) + \
        [config.resolve_path(config.thrall.recipes_dir)]
    prompts, prompt_errors = load_prompts([f / "prompts" for f in folders])
    result = load_recipes(folders, prompts=prompts)
    files = recipe_files(folders)
    rows = [{"name": n, "file": str(files[n]), "mode": r.mode, "trigger": r.trigger.type,
             "evaluate": r.evaluate.type, "description": r.description}
            for n, r in sorted(result.recipes.items())]
    errors = {**{f"prompt:{k}": v for k, v in prompt_errors.items()}, **result.errors}
    if args.json:
        print(json.dumps({"recipes": rows, "errors": errors}, indent=2))
        return 1 if errors else 0
    for row in rows:
        print(f"{row['name']:<22} {row['trigger']:<9} {row['evaluate']:<8} {row['mode']:<10} "
              f"{row['description']}".rstrip())
    for why in errors.values():
        print(f"error: {why}")
    return 1 if errors else 0


def _delegate_path(config: Config) -> Path:
    return config.resolve_path(config.thrall.delegate_key)


async def run_delegate(args: argparse.Namespace) -> int:
    from knarr.recipes import delegate

    if not args.ceiling >= 0:
        raise ConfigError(f"--ceiling: expected credits >= 0, got {args.ceiling}")
    config = _config(args.config)
    store = Store(args.storage, readonly=True)
    try:
        seed = store.get_meta("signing_key")
    finally:
        store.close()
    if seed is None:
        raise StorageError(f"{args.storage}: the database holds no node identity")
    identity = Identity.from_seed(seed)
    path = _delegate_path(config)
    delegation = delegate.issue(path, identity, ceiling=args.ceiling, days=args.days,
                                clock=time.time)
    cert = delegation.certificate
    print(f"Delegate key {delegation.key.public_key.hex()[:16]}… may settle for node "
          f"{identity.node_id_hex[:16]}… up to {to_credits(cert.ceiling):g} credits a day "
          f"until {_when(cert.expires)}.")
    print(f"Key file: {path} (delete it, or run `knarr thrall revoke`, to revoke it here)")
    return 0


async def run_revoke(args: argparse.Namespace) -> int:
    path = _delegate_path(_config(args.config))
    if not path.exists():
        print(f"No delegate key at {path}; nothing to revoke.")
        return 0
    path.unlink()
    print(f"Deleted {path}: Thrall can no longer sign settlements. (Peers honour the "
          "certificate until it expires.)")
    return 0
