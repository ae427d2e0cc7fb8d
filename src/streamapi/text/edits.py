"""Code edits asked for in aider's edit formats: *SEARCH/REPLACE blocks* and *file listings*.

aider's "diff" edit format (its choice for the models it knows) tells the model,
in its system prompt, to describe each change as a *SEARCH/REPLACE block*: the
file's path, a fence, the exact lines to find after ``<<<<<<< SEARCH``, their
replacement after ``=======``, then ``>>>>>>> REPLACE``; an empty SEARCH creates
a file. Its "whole" format (for models it does not know) asks for a *file
listing*: the path, then the whole new content in a fence. The files added to
the chat come in a user message ("I have *added these files to the chat* ...")
as the path, then the content in a fence, and the request is followed by a
reminder of the format. An edit request is answered with one edit that aider
applies: the file's first non-empty line is kept and a comment recording the
request is added after it (or the file the request names is created, when no
file is in the chat). A question about the code gets prose, as a model would
answer it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Literal

_DIFF = re.compile(r"SEARCH/REPLACE block", re.IGNORECASE)
_WHOLE = re.compile(r"\*file listing\*", re.IGNORECASE)
_FILES_SHOWN = "added these files to the chat"
# A file as aider shows it: its path alone on a line, then its content in a fence.
_FILE = re.compile(r"^([^\s`][^\n`]*)\n(`{3,}|~{3,})[^\n]*\n(.*?)^\2[ \t]*$", re.M | re.S)
# The format's reminder aider appends to the request.
_REMINDER = re.compile(
    r"(?:#\s*\*?SEARCH/REPLACE block\*? Rules:|To suggest changes to a file you MUST).*",
    re.IGNORECASE | re.DOTALL,
)
_EDIT_VERBS = re.compile(
    r"\b(?:add|change|edit|modify|fix|rename|refactor|remove|delete|update|implement|create"
    r"|write|make|replace|move|convert|insert|append|rewrite|improve|document|comment)\b",
    re.IGNORECASE,
)
_FILE_NAME = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.[A-Za-z]\w{0,5})\b")
_COMMENTS = {
    ("py", "sh", "bash", "rb", "pl", "r", "yaml", "yml", "toml", "cfg", "ini", "txt", "mk"): "#",
    (
        "js",
        "mjs",
        "ts",
        "tsx",
        "jsx",
        "c",
        "h",
        "cc",
        "cpp",
        "hpp",
        "go",
        "java",
        "kt",
        "rs",
        "swift",
        "cs",
        "scala",
        "php",
        "dart",
    ): "//",
    ("sql", "lua", "hs"): "--",
}
_LANGUAGES = {"py": "python", "js": "javascript", "ts": "typescript", "rb": "ruby", "sh": "bash"}
# The request recorded in the comment is cut to this length.
_NOTE_CHARS = 80
_MAX_SCAN_CHARS = 400_000


def edit_format(instructions: Sequence[str]) -> Literal["diff", "whole"] | None:
    """The edit format the prompt asks for: aider's "diff" (SEARCH/REPLACE blocks) or
    "whole" (file listings); None if neither."""
    texts = [text[:_MAX_SCAN_CHARS] for text in instructions]
    if any(_DIFF.search(text) for text in texts):
        return "diff"
    if any(_WHOLE.search(text) for text in texts):
        return "whole"
    return None


def files_in_chat(user_messages: Sequence[str]) -> dict[str, str]:
    """The files aider added to the chat, by path, the latest content of each."""
    files: dict[str, str] = {}
    for text in user_messages:
        if _FILES_SHOWN not in text:
            continue
        for path, _, content in _FILE.findall(text[:_MAX_SCAN_CHARS]):
            files[path.strip()] = content
    return files


def write_edit(
    request: str, files: dict[str, str], form: Literal["diff", "whole"] = "diff"
) -> str | None:
    """One edit, in ``form``, that carries out ``request``; None if it asks no edit."""
    request = _REMINDER.sub("", request).strip()
    if not _EDIT_VERBS.search(request):
        return None
    named = _FILE_NAME.findall(request)
    target = next(
        (p for p in files if any(n == p or PurePosixPath(p).name == n for n in named)), None
    )
    if target is None and files:
        target = next(iter(files))
    if target is None and not named:
        return None
    path = target or named[0]
    note = " ".join(request.split())
    note = note if len(note) <= _NOTE_CHARS else note[: _NOTE_CHARS - 3] + "..."
    comment = _comment(path, f"Requested: {note}")
    if target is None:
        search, replace, verb = "", f"{comment}\n", "create"
    else:
        first = next((line for line in files[target].splitlines() if line.strip()), None)
        if first is None:
            search, replace = "", f"{comment}\n"
        else:
            search, replace = f"{first}\n", f"{first}\n{comment}\n"
        verb = "modify"
    if form == "whole":
        content = files.get(path, "")
        whole = content.replace(search, replace, 1) if search else replace + content
        return (
            f"Ok, I will:\n\n1. {note[:1].upper()}{note[1:].rstrip('.')}.\n\n"
            f"{path}\n```\n{whole if whole.endswith(chr(10)) else whole + chr(10)}```\n"
        )
    language = _LANGUAGES.get(PurePosixPath(path).suffix.lstrip("."), "")
    return (
        f"To make this change we need to {verb} `{path}`:\n\n"
        f"1. {note[:1].upper()}{note[1:].rstrip('.')}.\n\n"
        "Here are the *SEARCH/REPLACE* blocks:\n\n"
        f"{path}\n```{language}\n<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n```\n"
    )


def _comment(path: str, text: str) -> str:
    suffix = PurePosixPath(path).suffix.lstrip(".").lower()
    if suffix in ("html", "xml", "md", "svg", "vue"):
        return f"<!-- {text} -->"
    if suffix == "css":
        return f"/* {text} */"
    for suffixes, mark in _COMMENTS.items():
        if suffix in suffixes:
            return f"{mark} {text}"
    return f"# {text}"
