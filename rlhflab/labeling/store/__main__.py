"""`python -m rlhflab.labeling.store annotator-role --database labels`: the `rlhflab` command (`cli.main`), run as
a module."""

from . import cli

__all__ = ["main"]

main = cli.main  # one command line, whether the console script or `python -m` starts it

if __name__ == "__main__":
    main()
