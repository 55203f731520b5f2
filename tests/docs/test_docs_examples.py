"""Every code example in the documentation runs, so the docs cannot drift from the code.

* Each ```python block of ``docs/**/*.md`` is executed; a page's blocks run in order in one
  namespace (a page reads top to bottom, as its reader does), in a temporary working directory.
  A block may be skipped only with a marker on the line right before its fence that states why:
  ``<!-- no-test: REASON -->`` (an empty reason fails the test). Other spellings of Python
  fences (``py``, ``python3``, ``pycon``) are refused, so no example escapes by its label.
* Shell blocks are command references (they need Fashion-MNIST and minutes of training, which
  ``tests/cli`` and ``tests/system`` cover); here every ``robustlab SUBCOMMAND --option`` they
  show is checked against the real command line, so a renamed or removed option fails.

Examples use scikit-learn's digits and tiny models: the whole module takes seconds.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parents[2] / "docs"
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`\n]*)$")
NO_TEST = re.compile(r"^\s*<!--\s*no-test:(?P<reason>.*?)-->\s*$")
PYTHON_ALIASES = {"py", "python3", "pycon", "py3", "ipython"}
SHELL = {"bash", "sh", "shell", "console", ""}


@dataclass
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip_reason: str | None


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of one Markdown page (nested fences of another length are text)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence = m["indent"], m["fence"]
        lang = m["info"].strip().split(" ")[0].split("{")[0].lower()
        marker = NO_TEST.match(lines[i - 1]) if i > 0 else None
        start = i
        body = []
        i += 1
        while i < len(lines) and not (lines[i].strip() == fence and lines[i].startswith(indent)):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"{path}:{start + 1}: unclosed code fence")
        i += 1
        code = textwrap.dedent("\n".join(body)) + "\n"
        out.append(Block(str(path.relative_to(DOCS.parent)), start + 1, lang, code,
                         marker["reason"].strip() if marker else None))
    return out


PAGES = sorted(DOCS.rglob("*.md"))
# Pages with at least one fenced block: the ones the example test looks at.
PAGES_WITH_CODE = [p for p in PAGES if blocks(p)]


def test_the_docs_have_examples():
    assert PAGES, f"no Markdown pages under {DOCS}"
    runnable = [b for p in PAGES for b in blocks(p) if b.lang == "python" and b.skip_reason is None]
    assert len(runnable) >= 20, f"only {len(runnable)} runnable Python examples in docs/"


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=[str(p.relative_to(DOCS)) for p in PAGES_WITH_CODE])
def test_every_python_example_runs(page: Path, tmp_path, monkeypatch):
    page_blocks = blocks(page)
    for b in page_blocks:
        assert b.lang not in PYTHON_ALIASES, f"{b.page}:{b.line}: label Python examples ```python (so they run), not {b.lang!r}"
        if b.skip_reason is not None:
            assert b.skip_reason, f"{b.page}:{b.line}: a no-test marker needs a reason: <!-- no-test: WHY -->"
    runnable = [b for b in page_blocks if b.lang == "python" and b.skip_reason is None]
    if not runnable:
        return  # shell or JSON only: checked below / by the results-schema page's own examples
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    torch.manual_seed(0)
    namespace: dict = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
    for b in runnable:
        try:
            exec(compile(b.code, f"{b.page}:{b.line}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"the example at {b.page}:{b.line} failed: {type(e).__name__}: {e}\n\n{b.code}") from e


# --- shell examples: every robustlab option shown exists ------------------------------------------
def _commands(code: str) -> list[list[str]]:
    """``robustlab SUB ...`` invocations of a shell block, continuation lines joined, comments cut."""
    text = re.sub(r"\\\n", " ", code)
    out = []
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        words = line.split()
        for k, w in enumerate(words):
            if w == "robustlab" and (k == 0 or words[k - 1] == "-m"):
                rest = words[k + 1 :]
                if rest[:1] == ["--"]:
                    rest = rest[1:]
                if rest and not rest[0].startswith("-") and not rest[0].startswith("["):
                    out.append(rest)
                break
    return out


def test_every_command_line_option_shown_exists():
    import click

    from robustlab.cli import main

    ctx = click.Context(main)
    shown = 0
    problems = []
    for page in PAGES:
        for b in blocks(page):
            if b.lang not in SHELL:
                continue
            for words in _commands(b.code):
                sub = main.get_command(ctx, words[0])
                if sub is None:
                    problems.append(f"{b.page}:{b.line}: no subcommand {words[0]!r}")
                    continue
                while isinstance(sub, click.Group) and len(words) > 1 and not words[1].startswith("-"):
                    inner = sub.get_command(ctx, words[1])  # a group's command: robustlab gan train ...
                    if inner is None:
                        problems.append(f"{b.page}:{b.line}: robustlab {words[0]} has no command {words[1]!r}")
                        break
                    sub, words = inner, [f"{words[0]} {words[1]}", *words[2:]]
                known = {o for p in sub.params for o in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}
                for opt in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", " ".join(words[1:])):
                    shown += 1
                    if opt not in known:
                        problems.append(f"{b.page}:{b.line}: robustlab {words[0]} has no option {opt}")
    assert not problems, "\n".join(problems)
    assert shown >= 20, f"only {shown} options checked: is the extraction broken?"
