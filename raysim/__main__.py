"""`python -m raysim`: the command line."""

from raysim.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
