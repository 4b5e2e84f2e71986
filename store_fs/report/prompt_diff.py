"""Word-level differences between two versions of a resource's text, as HTML.

Prompts are usually a line or a paragraph, where a line diff says only "it changed"; a diff
by words (whitespace kept) shows what an optimiser edited: removed words in ``<del>``, added
ones in ``<ins>``. Lines are matched first and words only within the lines that changed, and a
changed block too big to compare word by word (:data:`WORD_DIFF_BUDGET`) is shown as removed
and added whole: a word diff's time grows with the product of the two lengths, and three
rewritten 8,000-word prompts took 26 s. Texts of too many lines to match line by line
(:data:`LINE_DIFF_BUDGET`) are compared as one block the same way.
"""

from __future__ import annotations

import difflib
import re

from store_fs.report.svg_charts import esc

__all__ = ["diff_html", "diff_texts"]

_TOKEN = re.compile(r"\s+|\w+|[^\w\s]")  # runs of space, words, single punctuation


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


#: Words before times words after that one changed block may compare word by word.
WORD_DIFF_BUDGET = 400_000
#: Lines before times lines after that are matched line by line. Matching lines that repeat
#: (blank lines between bullets) takes far more than the product: two 2,000-line versions took
#: 24 s, and ``agl report --watch`` paid it at every page (found by an adversarial pass);
#: 100,000 takes about 0.1 s at worst here. Above it, the texts are compared as one block.
LINE_DIFF_BUDGET = 100_000


def diff_html(before: str, after: str) -> str:
    """``after`` with the words removed from ``before`` struck out and the new ones marked."""
    old, new = before.splitlines(keepends=True), after.splitlines(keepends=True)
    if len(old) * len(new) > LINE_DIFF_BUDGET:
        return _word_diff(before, after)  # words kept at both ends, the rest whole if too big
    out: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(esc("".join(new[j1:j2])))
        elif op == "delete":
            out.append(f"<del>{esc(''.join(old[i1:i2]))}</del>")
        elif op == "insert":
            out.append(f"<ins>{esc(''.join(new[j1:j2]))}</ins>")
        else:
            out.append(_word_diff("".join(old[i1:i2]), "".join(new[j1:j2])))
    return "".join(out)


def _word_diff(before: str, after: str) -> str:
    old, new = _tokens(before), _tokens(after)
    # Words both keep at the start and at the end are not compared (a one-word edit in a long
    # paragraph stays within the budget).
    head = 0
    while head < min(len(old), len(new)) and old[head] == new[head]:
        head += 1
    tail = 0
    while tail < min(len(old), len(new)) - head and old[-1 - tail] == new[-1 - tail]:
        tail += 1
    old_mid, new_mid = old[head : len(old) - tail], new[head : len(new) - tail]
    out = [esc("".join(new[:head]))]
    if len(old_mid) * len(new_mid) > WORD_DIFF_BUDGET:
        out.append(f"<del>{esc(''.join(old_mid))}</del><ins>{esc(''.join(new_mid))}</ins>")
    else:
        for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old_mid, b=new_mid, autojunk=False).get_opcodes():
            if op in ("delete", "replace"):
                out.append(f"<del>{esc(''.join(old_mid[i1:i2]))}</del>")
            if op in ("insert", "replace"):
                out.append(f"<ins>{esc(''.join(new_mid[j1:j2]))}</ins>")
            if op == "equal":
                out.append(esc("".join(new_mid[j1:j2])))
    out.append(esc("".join(new[len(new) - tail :])))
    return "".join(out)


def diff_texts(before: dict[str, str] | None, after: dict[str, str]) -> list[tuple[str, str]]:
    """(resource name, HTML) for each resource of ``after`` that differs from ``before`` (all of
    them, unmarked, when there is no previous version); removed resources are listed struck out."""
    if before is None:
        return [(name, esc(text)) for name, text in after.items()]
    out: list[tuple[str, str]] = []
    for name, text in after.items():
        previous = before.get(name)
        if previous is None:
            out.append((name, f"<ins>{esc(text)}</ins>"))
        elif previous != text:
            out.append((name, diff_html(previous, text)))
    out.extend((name, f"<del>{esc(text)}</del>") for name, text in before.items() if name not in after)
    return out
