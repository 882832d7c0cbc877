"""The lab's notebooks, shipped inside the package (as `rlhflab.notebooks`) so that `python -m rlhflab.lab.demo`
runs the quickstart from an installed wheel, outside any checkout."""
