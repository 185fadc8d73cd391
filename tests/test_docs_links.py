"""The repository stands on its own: no file points readers to documents users do not have, and
every ``docs/...`` page a source file, recipe or doc names exists."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT = [p for pattern in ("src/**/*.py", "src/**/*.yaml", "docs/**/*.md", "benchmarks/*.py", "benchmarks/*.sh",
                          "scripts/*.py", "tests/*.py", "*.md", "Makefile")
        for p in ROOT.glob(pattern) if p.name != Path(__file__).name]
# documents that exist only on the developers' side, never in a user's copy
OUTSIDE = re.compile(r"shared/|DESIGN\.md|anchors\.md|msvq-ascl-msf-moco\.md|wcl-bsim-pnnclr-baselines\.md|"
                     r"\bspecs?\b(?! *=)(?!\.)|spec's|specs'|\bsections? \d|§\d|\d\(i\)\d", re.IGNORECASE)
ALLOWED = re.compile(r"spec_from_file_location|module_from_spec\(spec\)|\bspec\.(name|loader)|\bspec = |\"Spec\" in doc")


def test_there_are_files_to_check():
    assert len(TEXT) > 100


@pytest.mark.parametrize("path", TEXT, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_reference_to_documents_outside_the_repository(path):
    bad = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        line = ALLOWED.sub("", line)
        line = re.sub(r"Specs?: docs/methods", "", line)  # loss docstrings: "Spec: docs/methods/<page>.md"
        if OUTSIDE.search(line):
            bad.append(f"{n}: {line.strip()[:120]}")
    assert not bad, bad


def test_every_named_docs_page_exists():
    missing = set()
    for path in TEXT:
        for ref in re.findall(r"docs/[\w./-]+\.md", path.read_text(errors="replace")):
            if not (ROOT / ref).is_file():
                missing.add(f"{path.relative_to(ROOT)} -> {ref}")
    assert not missing, sorted(missing)


def test_every_method_and_plugin_has_a_page():
    from relssl.methods import METHODS
    from relssl.methods.plugins import PLUGINS

    names = set(METHODS) | {"ascl", "bsim"} | {"oracle" if n == "mask_false_negatives" else n for n in PLUGINS}
    assert {n for n in names if not (ROOT / "docs" / "methods" / f"{n}.md").is_file()} == set()
