"""MkDocs hooks of the documentation site (``make docs``; mkdocs.yml names this file).

* The home page is the repository's README (``docs/index.md`` is its placeholder), with its
  ``docs/...`` links made relative to the site.
* The docs link to files outside ``docs/`` (sources, benchmark results, the README's scripts),
  which GitHub shows but a static site does not hold: a link to an existing file outside
  ``docs/`` becomes the file's repository path in code style. A link to a file that does not
  exist is left alone, so that ``mkdocs build --strict`` fails on it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
LINK = re.compile(r"(?<!!)\[([^\]\n]*)\]\(([^)\s]+)\)")
IMAGE = re.compile(r"!\[([^\]\n]*)\]\(([^)\s]+)\)")
EXTERNAL = "external"  # where images from outside docs/ are served (docs/external/<repository path>)


def _outside_links(markdown: str, page_dir: Path) -> str:
    def fix(m: re.Match) -> str:
        text, target = m.group(1), m.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
            return m.group(0)
        path = (page_dir / target.split("#", 1)[0]).resolve()
        try:
            path.relative_to(DOCS)
            return m.group(0)  # inside the site: mkdocs checks it
        except ValueError:
            pass
        if not path.exists():
            return m.group(0)  # broken: left for mkdocs to report
        rel = path.relative_to(ROOT).as_posix()
        plain = text.strip("`")
        return f"`{rel}`" if plain in (rel, Path(rel).name, target) else f"{text} (`{rel}`)"

    def image(m: re.Match) -> str:
        alt, target = m.group(1), m.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("/"):
            return m.group(0)
        path = (page_dir / target).resolve()
        if path.is_relative_to(DOCS) or not path.is_file():
            return m.group(0)  # inside the site, or broken: mkdocs checks it
        served = DOCS / EXTERNAL / path.relative_to(ROOT)
        return f"![{alt}]({os.path.relpath(served, page_dir)})"

    return IMAGE.sub(image, LINK.sub(fix, markdown))


def on_files(files, config):
    """Serve the images that pages outside-link (benchmark plots) under ``external/``."""
    from mkdocs.structure.files import File

    for path in sorted((ROOT / "benchmarks" / "results").glob("*.png")):
        files.append(File.generated(config, f"{EXTERNAL}/{path.relative_to(ROOT).as_posix()}", abs_src_path=str(path)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    src = Path(page.file.abs_src_path)
    if page.file.src_uri == "index.md":
        readme = _outside_links((ROOT / "README.md").read_text(), ROOT)
        return re.sub(r"\]\(docs/", "](", readme)  # the README's docs/ links, from the site's root
    return _outside_links(markdown, src.parent)
