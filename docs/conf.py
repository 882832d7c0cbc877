"""Sphinx configuration of the documentation site: `make docs` builds it offline into docs/_build/html."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import rlhflab  # noqa: E402

project = "rlhflab"
release = version = rlhflab.__version__
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3  # "[text](page.md#a-heading)" links resolve to the heading's anchor
html_theme = "alabaster"  # ships with Sphinx: the build needs no network
html_static_path = []
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the signatures already show them; the types' own pages are not built
napoleon_google_docstring = True
napoleon_numpy_docstring = False


def plain_text_blocks(app, what, name, obj, options, lines):
    """The lab's docstrings are plain text, read with help() as often as here. An indented block after a blank
    line or after a line ending in ':' (a table of names, a formula, 'Columns:') shows as written, in a
    literal block; a '- ' list gets the blank lines reST wants around it; '|' is text, not a substitution."""
    out, in_block, in_list = [], False, False
    for line in lines:
        text = line.strip()
        indented = line.startswith(" ") and text
        before = out[-1] if out else ""
        if in_block and text and not indented:
            in_block = False
            out.append("")
        bullet = not in_block and line.startswith("- ")
        if bullet and before.strip() and not in_list:
            out.append("")  # a list after a paragraph line
        if in_list and text and not indented and not bullet:
            out.append("")  # a paragraph after a list
        in_list = bullet or (in_list and bool(indented))
        if indented and not in_block and not in_list and not text.startswith((":", "..")):
            if not before.strip():
                out.extend(["::", ""])
                in_block = True
            elif before.rstrip().endswith(":") and not before.lstrip().startswith((":", "- ")):
                out[-1] = before.rstrip() + ":"  # 'Columns:' becomes 'Columns::', reST's literal block
                out.append("")
                in_block = True
        out.append(line if in_block else line.replace("|", "\\|"))
    lines[:] = out


def setup(app):
    app.connect("autodoc-process-docstring", plain_text_blocks, priority=600)  # after napoleon's (500)
