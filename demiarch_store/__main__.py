"""``python -m demiarch_store``: the ``demiarch-store`` command line."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
