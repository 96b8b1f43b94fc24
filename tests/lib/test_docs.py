"""The documentation keeps its promises: the two READMEs stay short (the README is a newcomer's page,
recipes/README.md a user guide; details go to docs/), every relative link points to a file that
exists, and no page tells a user to run a recipe by its file path (``python recipes/train.py``), the
form that stopped working when the recipes became packages run as modules (``python -m recipes.train``).

CHANGELOG.md is left out on purpose: it records the old commands next to the new ones.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README_MAX_BYTES = 12_000        # strictly below: the newcomer's page
RECIPES_README_MAX_BYTES = 15_000  # at most: the recipes' user guide

FENCED_CODE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//|#)", re.I)  # http:, mailto:, //host, #anchor
# a recipe run by its file path (`python recipes/x.py`, `torchrun --opt=v recipes/x.py`: the script right
# after the interpreter or launcher and its options), or the old sweep and benchmark files, now packages
OLD_COMMAND = re.compile(r"\b(?:python3?|torchrun(?:\s+-\S+)*)\s+recipes/[\w/]+\.py\b"
                         r"|\brecipes/table3\.py\b|\brecipes/benchmark\.py\b|\bbenchmarks/bench_\w+\.py\b")


def doc_files() -> list[Path]:
    """The pages a user reads: both READMEs and everything under docs/ (not the CHANGELOG's history)."""
    return [REPO / "README.md", REPO / "recipes" / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def relative_links(markdown: str) -> list[str]:
    """The targets of the Markdown links and images outside code, without ``#fragment``; external ones
    (a URL scheme, ``//host``, a bare ``#anchor``) left out."""
    prose = INLINE_CODE.sub("", FENCED_CODE.sub("", markdown))
    targets = (m.group(1) for m in LINK.finditer(prose))
    return [t.split("#", 1)[0] for t in targets if not EXTERNAL.match(t)]


def broken_links(page: Path, root: Path = REPO) -> list[str]:
    """``page: target`` (page relative to ``root``) for every relative link of ``page`` whose file or
    folder does not exist."""
    return [f"{page.relative_to(root)}: {t}" for t in relative_links(page.read_text(encoding="utf-8"))
            if not (page.parent / t).exists()]


def old_commands(text: str) -> list[str]:
    """Each line of ``text`` that runs a recipe by its file path (:data:`OLD_COMMAND`)."""
    return [line.strip() for line in text.splitlines() if OLD_COMMAND.search(line)]


# ------------------------------------------------------------------------------- the checkers themselves

def test_relative_links_skip_code_urls_and_anchors() -> None:
    text = ("See [the guide](recipes/README.md#outputs), ![fig](docs/fig.png \"title\") and "
            "[site](https://example.org/x.md), [top](#set-up), [mail](mailto:a@b.c).\n"
            "`[not](a-link.md)`\n```python\nx = table[i](y)  # [code](b.md)\n```\n")
    assert relative_links(text) == ["recipes/README.md", "docs/fig.png"]


def test_a_broken_link_is_reported_with_its_page(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "page.md"
    page.write_text("[here](page.md) [up](../docs/) [gone](missing/file.md#part)\n", encoding="utf-8")
    assert broken_links(page, root=tmp_path) == ["docs/page.md: missing/file.md"]


@pytest.mark.parametrize("line", [
    "python recipes/train.py --config x.py",
    "python3 recipes/data/describe.py --csv a.csv",
    "torchrun --nproc_per_node=8 recipes/train.py --profile paper",
    "see recipes/table3.py --profile demo",
    "python benchmarks/bench_kd_loss.py",
])
def test_old_command_forms_are_found(line: str) -> None:
    assert old_commands(line) == [line]


@pytest.mark.parametrize("line", [
    "python -m recipes.train --config recipes/configs/table3/erm.py --profile demo",
    "torchrun --nproc_per_node=8 -m recipes.train --config recipes/configs/table3/erm.py",
    "the sweep lives in recipes/table3/cli.py (python -m recipes.table3)",
    "bash recipes/benchmark/gpu_checks.sh",
])
def test_module_forms_and_file_references_pass(line: str) -> None:
    assert old_commands(line) == []


# ------------------------------------------------------------------------------- the documentation

def test_readme_is_under_12_kb() -> None:
    size = len((REPO / "README.md").read_bytes())
    assert size < README_MAX_BYTES, (f"README.md is {size} bytes, expected < {README_MAX_BYTES}: move detail "
                                     f"to a page under docs/ and link it")


def test_recipes_readme_is_at_most_15_kb() -> None:
    size = len((REPO / "recipes" / "README.md").read_bytes())
    assert size <= RECIPES_README_MAX_BYTES, (
        f"recipes/README.md is {size} bytes, expected <= {RECIPES_README_MAX_BYTES}: measurements go to "
        f"docs/experiments/, details to docs/")


def test_every_relative_link_points_to_an_existing_file() -> None:
    pages = doc_files()
    assert len(pages) >= 8, f"expected the READMEs and the docs/ pages, found {pages}"
    assert len(relative_links((REPO / "README.md").read_text(encoding="utf-8"))) >= 5  # the checker sees links
    broken = [b for page in pages for b in broken_links(page)]
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_no_page_runs_a_recipe_by_its_file_path() -> None:
    found = [f"{page.relative_to(REPO)}: {line}" for page in doc_files()
             for line in old_commands(page.read_text(encoding="utf-8"))]
    assert not found, ("run the recipes as modules from the checkout's root (python -m recipes.train, "
                       "python -m recipes.table3, python -m recipes.benchmark); found:\n" + "\n".join(found))
