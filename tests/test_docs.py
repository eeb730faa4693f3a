"""README and docs/ stay honest: the Commands table, the CI's install and test lines, and every relative link.

Pure text (plus importing the click group, which imports no torch): fast.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code spans (links there are not links)."""
    return re.sub(r"`[^`\n]*`", "", _prose_keep_code_spans(text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, markup dropped, lowercase, punctuation but - and _
    dropped, each space a hyphen."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for line in _prose_keep_code_spans(path.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = _slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _prose_keep_code_spans(text: str) -> str:
    """``text`` without fenced code blocks (a ``# comment`` there is not a heading); code spans kept."""
    out, fence = [], None
    for line in text.splitlines():
        m = re.match(r"\s*(`{3,}|~{3,})", line)
        if m and (fence is None or m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence)):
            fence = m.group(1) if fence is None else None
            continue
        if fence is None:
            out.append(line)
    return "\n".join(out)


def _section(text: str, heading: str) -> str:
    """The body of the ``## heading`` section of ``text``."""
    m = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"README.md has no '## {heading}' section"
    return m.group(1)


def _commands_table() -> dict[str, str]:
    """Command name -> its row in README's Commands table (the first cell's `compress NAME ...`)."""
    rows = {}
    for line in _section(README.read_text(), "Commands").splitlines():
        m = re.match(r"\|\s*`compress (\w[\w-]*)", line)
        if m:
            rows.setdefault(m.group(1), "")
            rows[m.group(1)] += line
    return rows


def test_readme_commands_table_names_every_command():
    from compress.cli import cli

    rows = _commands_table()
    missing = sorted(set(cli.commands) - set(rows))
    assert not missing, f"README.md's Commands table does not name: {', '.join(missing)}"


def test_readme_commands_table_lists_every_option():
    from compress.cli import cli

    rows = _commands_table()
    problems = []
    for name, command in cli.commands.items():
        for param in command.params:
            for opt in [o for o in param.opts if o.startswith("--")] if hasattr(param, "opts") else []:
                if opt == "--help" or getattr(param, "param_type_name", "") != "option":
                    continue
                if not re.search(rf"`[^`]*{re.escape(opt)}\b", rows.get(name, "")):
                    problems.append(f"compress {name} {opt}")
    assert not problems, "README.md's Commands table does not list: " + ", ".join(problems)


def _ci_commands() -> list[str]:
    """The install and test command lines `.ci/run` runs (comments and shell plumbing left out)."""
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    return [ln for ln in lines if ln.startswith(("pip install", "python -m pytest"))]


def test_readme_has_the_exact_install_and_test_lines_ci_runs():
    commands = _ci_commands()
    assert any(c.startswith("pip install") for c in commands) and "python -m pytest -q" in commands
    readme_lines = {ln.strip() for ln in README.read_text().splitlines()}
    missing = [c for c in commands if c not in readme_lines]
    assert not missing, f".ci/run runs lines README.md does not show verbatim: {missing}"


def _links(path: Path) -> list[str]:
    return [t for t in LINK.findall(_prose(path.read_text()))
            if not re.match(r"[a-z][a-z0-9+.-]*:", t)]  # http:, https:, mailto: ... are not checked


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in _links(page):
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading with anchor '#{anchor}' in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_readme_links_every_docs_page():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in _links(README)}
    missing = [str(p.relative_to(ROOT)) for p in DOCS if p.resolve() not in linked]
    assert not missing, f"README.md does not link: {missing}"


def test_readme_default_recipe_is_recipes_digits_yaml():
    """The annotated recipe in README has the keys and values of recipes/digits.yaml (comments may differ)."""
    text = _section(README.read_text(), "The default recipe, annotated")
    block = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert block, "README's annotated recipe has no yaml block"
    assert yaml.safe_load(block.group(1)) == yaml.safe_load((ROOT / "recipes" / "digits.yaml").read_text())


def test_slug_follows_github():
    assert _slug("`compress check`: the CI gate") == "compress-check-the-ci-gate"
    assert _slug("Install (a fresh machine, Python 3.11, 2 CPU cores are enough)") == \
        "install-a-fresh-machine-python-311-2-cpu-cores-are-enough"
    assert _slug("LM: INT4 block size x accuracy_level") == "lm-int4-block-size-x-accuracy_level"
    assert _slug("Hugging Face models (`compress[hf]`)") == "hugging-face-models-compresshf"


def test_the_cluster_section_is_the_multi_node_tests_command():
    """docs/distributed.md's cluster command is the template tests/test_distributed.py runs, variables filled in."""
    import re

    from test_distributed import CLUSTER

    doc = (ROOT / "docs" / "distributed.md").read_text()
    block = re.search(r"```bash\n(torchrun --nnodes \$NNODES.*?)```", doc, re.S).group(1)
    shown = " ".join(block.replace("\\\n", " ").split())
    template = CLUSTER.format(nnodes="$NNODES", node_rank="$NODE_RANK", nproc_per_node="$NPROC_PER_NODE",
                              head="$HEAD_NODE", port="$PORT", recipe="recipe.yaml", output="/shared/exported")
    assert shown == template
