"""`pairfilter-catalog`: the DuckDB catalog (`<state>/catalog.duckdb`, views over the result files) deleted and
rebuilt from the files (`rebuild`, the default), or a data folder of an earlier version migrated to the result files
(`migrate`). The storage settings are those of `pairfilter-materialize`: the definitions' storage resource, then
`-c` files (`resources.storage.config`), then the options given here."""

import argparse
import sys

from .cli import BadInput, load_run_config, storage_for
from .core.catalog import write_catalog
from .core.migrate import migrate_store

COMMAND = "pairfilter-catalog"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("action", nargs="?", choices=("rebuild", "migrate"), default="rebuild")
    parser.add_argument("-c", "--config", action="append", default=[], help="run config YAML file(s)")
    for name in ("data-dir", "output-dir", "state-dir"):
        parser.add_argument(f"--{name}", help=f"storage.{name.replace('-', '_')}")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        run_config = load_run_config(args.config)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    except BadInput as exc:
        print(f"{COMMAND}: error: {exc}", file=sys.stderr)
        return 2
    from .definitions import defs as load_defs

    overrides = {key: value for key, value in (("data_dir", args.data_dir), ("output_dir", args.output_dir),
                                               ("state_dir", args.state_dir)) if value}
    config = run_config.setdefault("resources", {}).setdefault("storage", {}).setdefault("config", {})
    config.update(overrides)
    try:
        storage = storage_for(run_config, (load_defs().resources or {})["storage"])
        results = storage.results
    except ValueError as exc:
        print(f"{COMMAND}: error: {exc}", file=sys.stderr)
        return 2
    if args.action == "migrate":
        if not storage.old_store.exists():
            print(f"{COMMAND}: nothing to migrate: no {storage.old_store}")
            return 0
        done = migrate_store(storage.old_store, results, storage.catalog, storage.storage_options)
        print(f"Migrated {storage.old_store}: {done.shards} shards, rows {done.rows}, {done.embeddings} embeddings "
              f"-> {results.root}; the old file is kept as {done.kept_as} (delete it when you like)")
        if done.published:
            print(f"  completed the publishing of {done.published}, which a killed run had committed")
    elif storage.old_store.exists():
        print(f"{COMMAND}: error: {storage.old_store} is a store of an earlier version: "
              f"run `{storage.migrate_command()}` first", file=sys.stderr)
        return 2
    storage.catalog.unlink(missing_ok=True)
    rows = write_catalog(results, storage.catalog, count=True)
    print(f"Catalog {storage.catalog}: views over {results.root}")
    for view, count in rows.items():
        print(f"  {view}: {count} rows")
    print(f"Query it with: duckdb -readonly {storage.catalog}" + (" (register the filesystem for a URL: docs/scaling.md)"
                                                                  if results.remote else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

