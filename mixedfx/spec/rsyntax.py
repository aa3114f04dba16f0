"""R's formula syntax, translated to what formulaic evaluates, before anything is parsed.

lme4 users paste R formulas; where R and Python read the same text differently the meaning
must be R's, never silently Python's:

- inside a function call (``I(x^2)``, ``log(x^2)``), ``^`` is a power in R and XOR in
  Python: it becomes ``**``.  At the formula level (``(a + b + c)^2``) it stays the
  crossing operator, which formulaic reads as R does;
- ``a %in% b`` (nesting) at the formula level becomes ``a:b``; inside a call, where R means
  set membership, it is refused with a clear message;
- R's ``TRUE``/``FALSE`` and ``c(1, 2)`` inside calls become ``True``/``False`` and ``[1, 2]``;
- R's functions under names Python can call: ``as.factor`` -> ``factor`` (formulaic's ``C``),
  ``as.numeric``/``as.double`` -> ``as_numeric``; :func:`r_column_name` writes column names
  back as lme4 prints them (``I(x^2)``, ``as.numeric(x)``, ``log(Sepal.Length)``);
- a dotted R name (``Sepal.Length``) inside a call is quoted as a column (formulaic reads it
  as such at the formula level already), except ``np.``, ``numpy.`` and ``contr.``.

The translation works on tokens (names, numbers, strings, backticked names, operators), so
quoted text is never rewritten.
"""

from __future__ import annotations

import re

from ..errors import FormulaError, caret

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<backtick>`[^`]*`)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_.][A-Za-z0-9_.]*)
  | (?P<inop>%in%)
  | (?P<op>\*\*|\|\||[-+*/:^~|(),=<>!&%\[\]{}])
    """,
    re.VERBOSE,
)

#: R functions and the names mixedfx evaluates them under.
FUNCTION_NAMES = {"as.factor": "factor", "as.numeric": "as_numeric", "as.double": "as_numeric"}

#: Attribute-style prefixes that are Python namespaces, not dotted R names.
NAMESPACES = ("np.", "numpy.", "contr.")


def _tokens(text: str) -> list[tuple[str, str, int]]:
    """``(kind, text, position)`` for every token of ``text``."""
    out, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise FormulaError(f"Cannot read the formula at {text[pos]!r}:" + caret(text, pos))
        out.append((match.lastgroup, match.group(), pos))
        pos = match.end()
    return out


def _next_significant(tokens: list, i: int) -> tuple[str, str, int] | None:
    for token in tokens[i + 1 :]:
        if token[0] != "space":
            return token
    return None


def translate(formula: str) -> str:
    """The formula with R's meanings written for formulaic (see the module docstring)."""
    tokens = _tokens(formula)
    out: list[str] = []
    stack: list[str] = []  # "call", "group" or "c" (R's c(), written as a list) per open parenthesis
    for i, (kind, text, pos) in enumerate(tokens):
        in_call = "call" in stack or "c" in stack
        following = _next_significant(tokens, i)
        opens_call = following is not None and following[1] == "("
        if kind == "name" and opens_call:
            if text == "c" and in_call:
                stack.append("c")
                out.append("[")
                tokens[tokens.index(following)] = ("skip", "", following[2])
                continue
            stack.append("pending-call")
            out.append(FUNCTION_NAMES.get(text, text))
            continue
        if kind == "skip":
            continue
        if kind == "op" and text == "(":
            if stack and stack[-1] == "pending-call":
                stack[-1] = "call"
            else:
                stack.append("group")
            out.append(text)
            continue
        if kind == "op" and text == ")":
            if not stack:
                raise FormulaError("Unbalanced ')' in formula:" + caret(formula, pos))
            out.append("]" if stack.pop() == "c" else ")")
            continue
        if kind == "op" and text == "^" and in_call:
            out.append("**")
            continue
        if kind == "inop":
            if in_call:
                raise FormulaError(
                    "%in% inside a function call (set membership) is not supported; write the "
                    "condition with == and |:" + caret(formula, pos)
                )
            out.append(":")
            continue
        if kind == "name" and in_call:
            if text in ("TRUE", "FALSE"):
                out.append(text.capitalize())
                continue
            if "." in text and not text.startswith(NAMESPACES) and not text.replace(".", "").isdigit():
                out.append(f"`{text}`")
                continue
        out.append(text)
    return "".join(out)


#: Characters after which ``[`` opens a list (an argument such as ``knots=[3, 6]``); after
#: anything else it opens formulaic's level or column suffix (``sex[T.M]``, ``poly(x, 2)[1]``).
_LIST_OPENERS = "=,(["

_PYTHON_WORDS = {"True": "TRUE", "False": "FALSE", "None": "NULL", "as_numeric": "as.numeric"}


def _suffix_end(name: str, start: int) -> int:
    """Position of the ``]`` that closes the suffix opened at ``start`` (nested brackets counted)."""
    depth = 0
    for i in range(start, len(name)):
        depth += name[i] == "["
        depth -= name[i] == "]"
        if depth == 0:
            return i
    return len(name)


def r_column_name(name: str) -> str:
    """A formulaic column name as lme4 prints it (R's ``deparse`` of the call, then the column).

    ``sex[T.M]`` -> ``sexM``; ``poly(x, 2)[1]`` -> ``poly(x, 2)1``; ``I(x ** 2)`` -> ``I(x^2)``;
    ``bs(x, knots=[3, 6], df=3)[1]`` -> ``bs(x, knots = c(3, 6), df = 3)1``;
    ``poly(x, 2, raw=True)[1]`` -> ``poly(x, 2, raw = TRUE)1``; R's function names
    (``as.numeric``), ``x/7`` and ``x^2`` unspaced, no backticks.  Level labels in suffixes
    are copied unchanged, but a logical's ``True``/``False`` are R's ``TRUE``/``FALSE``.
    """
    out: list[str] = []
    lists = 0  # open list literals, written as c(...)
    i = 0
    while i < len(name):
        ch = name[i]
        previous = "".join(out).rstrip()[-1:]
        if ch == "[" and previous and previous not in _LIST_OPENERS:
            end = _suffix_end(name, i)
            label = name[i + 1 : end]
            label = label[2:] if label.startswith("T.") else label
            out.append({"True": "TRUE", "False": "FALSE"}.get(label, label))  # a logical's levels, as R
            i = end + 1
            continue
        if ch == "[":
            out.append("c(")
            lists += 1
        elif ch == "]" and lists:
            out.append(")")
            lists -= 1
        elif ch == "=" and name[i + 1 : i + 2] != "=" and previous not in ("=", "<", ">", "!"):
            while out and out[-1] == " ":
                out.pop()
            out.append(" = ")
            while name[i + 1 : i + 2] == " ":
                i += 1
        elif (ch == "*" and name[i + 1 : i + 2] == "*") or ch == "/":  # R writes x^2 and x/7 unspaced
            while out and out[-1] == " ":
                out.pop()
            out.append("^" if ch == "*" else "/")
            i += ch == "*"
            while name[i + 1 : i + 2] == " ":
                i += 1
        elif ch == "`":
            pass
        elif ch.isalpha() or ch == "_":
            match = re.match(r"[A-Za-z_][A-Za-z0-9_.]*", name[i:])
            word = match.group()
            out.append(_PYTHON_WORDS.get(word, word))
            i += len(word)
            continue
        elif ch in ("'", '"'):
            end = name.find(ch, i + 1)
            end = len(name) - 1 if end < 0 else end
            out.append(name[i : end + 1])
            i = end + 1
            continue
        else:
            out.append(ch)
        i += 1
    return "".join(out)
