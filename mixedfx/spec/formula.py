"""Parsing of lme4-style mixed-model formulas.

A formula ``y ~ fixed + (expr | g) + (expr || g1/g2)`` is split into its response, its
fixed-effects part (handed to formulaic as it is) and its random-effects terms.

Random terms follow lme4:

- ``(expr | g)``: the columns of ``expr`` vary by ``g`` with an unstructured covariance;
- ``(expr || g)``: the same columns with independent (diagonal) covariance;
- ``g1/g2`` expands to the two factors ``g1`` and ``g2:g1`` (``g2`` nested in ``g1``);
- ``g1:g2`` is the interaction factor (one level for each observed pair).

Two fixed-part pieces are R's and not formulaic's:

- ``offset(expr)``: a term with coefficient fixed at 1 (subtracted from the response for
  the fit, added back to fitted values and predictions);
- ``.``: every data column the model does not otherwise use (the response, grouping
  factors, weights, offsets and residual-structure variables are left out; R would also
  enter the grouping factors, confounding them with their random intercepts).  It is
  expanded when the formula meets the data's columns (:func:`expand_dot`); ``. - x``
  leaves out ``x`` as well.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from dataclasses import dataclass, field

from formulaic import Formula
from formulaic.errors import FormulaicError

from ..errors import FormulaError, caret
from .expressions import expression_variables, factor_variables, quote_name
from .rsyntax import translate


@dataclass(frozen=True)
class RandomTerm:
    """One random-effects term: ``expr`` varying over the levels of ``factor``.

    ``factor`` is a tuple of column names whose combination defines the levels
    (one name for a simple factor, several for an interaction ``g2:g1``).
    ``covariance`` is the name of the covariance structure of the term's effects.
    """

    expr: str
    factor: tuple[str, ...]
    covariance: str = "unstructured"

    @property
    def group_name(self) -> str:
        """The grouping factor as lme4 names it, e.g. ``school`` or ``cask:batch``."""
        return ":".join(self.factor)


@dataclass(frozen=True)
class ParsedFormula:
    """A formula split into response, fixed part, offsets and random terms.

    ``offsets`` are the expressions inside ``offset(...)``; ``has_dot`` marks a fixed part
    with R's ``.``, which must be expanded (:func:`expand_dot`) before the fixed part is used;
    ``counts`` holds the successes and failures of a ``cbind(successes, failures)`` response.
    """

    text: str
    response: str
    fixed: str
    random: tuple[RandomTerm, ...] = field(default_factory=tuple)
    offsets: tuple[str, ...] = ()
    has_dot: bool = False
    counts: tuple[str, ...] = ()  # a binomial response cbind(successes, failures): its two expressions

    @property
    def fixed_formula(self) -> str:
        """The fixed part as a complete formulaic formula ``response ~ fixed``."""
        if self.has_dot:
            raise FormulaError(
                f"The formula {self.text!r} uses '.', which stands for the data's other columns: "
                "it is expanded when the formula meets the data."
            )
        return f"{self.response} ~ {self.fixed}"


def _split_top_level(text: str, sep: str, offset: int, full: str) -> list[tuple[str, int]]:
    """Split ``text`` at ``sep`` outside parentheses, keeping each piece's start offset."""
    pieces: list[tuple[str, int]] = []
    depth = 0
    start = 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise FormulaError("Unbalanced ')' in formula:" + caret(full, offset + i))
        elif ch == sep and depth == 0:
            pieces.append((text[start:i], offset + start))
            start = i + 1
    if depth != 0:
        raise FormulaError("Unclosed '(' in formula:" + caret(full, offset + len(text)))
    pieces.append((text[start:], offset + start))
    return pieces


def _wrapped_in_parentheses(piece: str) -> bool:
    """True when ``piece`` is one parenthesised group, like ``(1 | g)``."""
    s = piece.strip()
    if not (s.startswith("(") and s.endswith(")")):
        return False
    depth = 0
    for i, ch in enumerate(s):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0 and i < len(s) - 1:
            return False
    return True


def _find_bar(inner: str) -> int:
    """Position of the first top-level ``|`` in ``inner``, or -1."""
    depth = 0
    for i, ch in enumerate(inner):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "|" and depth == 0:
            return i
    return -1


_COLUMN_NAME = re.compile(r"[A-Za-z_.][A-Za-z0-9_.]*")


def _factor_name(name: str, full: str, offset: int) -> str:
    """A grouping variable: a column name, R's dotted names included, or a backticked one."""
    name = name.strip()
    if len(name) > 2 and name.startswith("`") and name.endswith("`") and "`" not in name[1:-1]:
        return name[1:-1]
    if not _COLUMN_NAME.fullmatch(name):
        raise FormulaError(
            f"Grouping factor {name!r} must be a column name (use g1:g2 for interactions, g1/g2 for "
            "nesting, g1*g2 for both and their interaction, `...` for other names):" + caret(full, offset)
        )
    return name


def _expand_nesting(group: str, full: str, offset: int) -> list[tuple[str, ...]]:
    """``g1/g2/g3`` -> ``[(g1,), (g2, g1), (g3, g2, g1)]``; ``a:b`` -> ``[(a, b)]``."""
    nested = [part.strip() for part in group.split("/")]
    if any(not part for part in nested):
        raise FormulaError("Empty grouping factor in random term:" + caret(full, offset))
    factors: list[tuple[str, ...]] = []
    outer: tuple[str, ...] = ()
    for part in nested:
        names = tuple(_factor_name(name, full, offset) for name in part.split(":"))
        factor = names + outer if outer else names
        factors.append(factor)
        outer = factor
    return factors


def _expand_factors(group: str, full: str, offset: int) -> list[tuple[str, ...]]:
    """The grouping factors of a random term, as lme4 expands them.

    ``g1/g2`` nests (``g1`` and ``g2:g1``), ``a:b`` is the interaction factor, and ``a*b`` is
    ``a``, ``b`` and ``a:b`` (lme4's expansion of ``(1 | a*b)``).
    """
    crossed = [part.strip() for part in group.split("*")]
    if len(crossed) == 1:
        return _expand_nesting(group, full, offset)
    if any(not part or "/" in part for part in crossed):
        raise FormulaError("Write crossed grouping factors as a*b (no nesting inside):" + caret(full, offset))
    names = [_factor_name(part, full, offset) for part in crossed]
    factors = [(name,) for name in names]
    for size in range(2, len(names) + 1):
        for combo in itertools.combinations(names, size):
            factors.append(tuple(combo))
    return factors


def _parse_random(piece: str, offset: int, full: str) -> list[RandomTerm]:
    """Parse one parenthesised random term into one or more :class:`RandomTerm`."""
    stripped = piece.strip()
    inner_offset = offset + piece.index("(") + 1
    inner = stripped[1:-1]
    bar = _find_bar(inner)
    double = inner[bar + 1 : bar + 2] == "|"
    expr = inner[:bar].strip()
    group = inner[bar + (2 if double else 1) :].strip()
    if not expr:
        raise FormulaError(
            "Random term has nothing before '|' (write (1 | g) for a random intercept):" + caret(full, inner_offset)
        )
    if not group:
        raise FormulaError("Random term has no grouping factor after '|':" + caret(full, inner_offset + bar))
    covariance = "independent" if double else "unstructured"
    return [
        RandomTerm(expr=expr, factor=factor, covariance=covariance)
        for factor in _expand_factors(group, full, inner_offset + bar + 1)
    ]


def _call_argument(piece: str, name: str) -> str | None:
    """The argument text of ``piece`` when it is one call ``name(...)``, else None."""
    s = piece.strip()
    if not s.startswith(name + "(") or not _wrapped_in_parentheses(s[len(name) :]):
        return None
    return s[len(name) + 1 : -1].strip()


_DOT = re.compile(r"\.(\s*-\s*[^-]+)*")


def parse_formula(formula: str) -> ParsedFormula:
    """Parse an lme4 formula such as ``"y ~ x + (1 + x | g)"``.

    Raises :class:`FormulaError` with the offending position marked when the formula
    is malformed (no ``~``, unbalanced parentheses, an empty random term, ...).
    """
    if not isinstance(formula, str) or not formula.strip():
        raise FormulaError("The formula must be a non-empty string such as 'y ~ x + (1 | g)'.")
    original = " ".join(formula.split())
    text = translate(original)  # R's meanings (^ inside calls is a power, ...): see mixedfx.spec.rsyntax
    if text.count("~") != 1:
        where = text.find("~", text.find("~") + 1) if text.count("~") > 1 else len(text)
        raise FormulaError("A formula needs exactly one '~' between response and predictors:" + caret(text, where))
    tilde = text.index("~")
    response = text[:tilde].strip()
    if not response:
        raise FormulaError("The formula has no response before '~':" + caret(text, 0))
    rhs = text[tilde + 1 :]
    if not rhs.strip():
        raise FormulaError("The formula has nothing after '~':" + caret(text, len(text)))
    fixed_pieces: list[str] = []
    random_terms: list[RandomTerm] = []
    offsets: list[str] = []
    has_dot = False
    for piece, offset in _split_top_level(rhs, "+", tilde + 1, text):
        if not piece.strip():
            raise FormulaError("Empty term (two '+' in a row?):" + caret(text, offset))
        argument = _call_argument(piece, "offset")
        if argument is not None:
            if not argument:
                raise FormulaError("offset() needs an expression, such as offset(log(exposure)):" + caret(text, offset))
            offsets.append(argument)
        elif _DOT.fullmatch(piece.strip()):
            has_dot = True
            fixed_pieces.append(piece.strip())
        elif _wrapped_in_parentheses(piece) and _find_bar(piece.strip()[1:-1]) >= 0:
            random_terms.extend(_parse_random(piece, offset, text))
        elif re.search(r"(?<![\w.])offset\(", piece):
            raise FormulaError(
                "offset(...) must be a term of its own (y ~ x + offset(z)), not part of another:" + caret(text, offset)
            )
        elif "|" in piece:
            raise FormulaError(
                "A '|' must be inside a parenthesised random term such as (1 | g):"
                + caret(text, offset + piece.index("|"))
            )
        else:
            fixed_pieces.append(piece.strip())
    fixed = " + ".join(fixed_pieces) if fixed_pieces else "1"
    for term in random_terms:
        if re.search(r"(?<![\w.])offset\(", term.expr):
            raise FormulaError(f"offset() belongs to the fixed part, not to the random term ({term.expr} | ...).")
    counts = _cbind_parts(response, text)
    parsed = ParsedFormula(original, response, fixed, tuple(random_terms), tuple(offsets), has_dot, counts)
    _check_expressions(parsed)
    return parsed


def _cbind_parts(response: str, text: str) -> tuple[str, ...]:
    """The two expressions of a ``cbind(successes, failures)`` response (empty for any other)."""
    argument = _call_argument(response, "cbind")
    if argument is None:
        return ()
    parts = [piece.strip() for piece, _ in _split_top_level(argument, ",", 0, argument)]
    if len(parts) != 2 or not all(parts):
        raise FormulaError(
            "cbind() in the response takes two expressions, the successes and the failures, as in "
            "cbind(cases, n - cases):" + caret(text, 0)
        )
    return tuple(parts)


def response_variables(parsed: ParsedFormula) -> set[str]:
    """The data columns the response uses (both expressions of a cbind response)."""
    if parsed.counts:
        return {name for expr in parsed.counts for name in expression_variables(expr)}
    return set(expression_variables(parsed.response))


def expand_dot(parsed: ParsedFormula, columns, exclude=()) -> ParsedFormula:
    """``parsed`` with R's ``.`` replaced by the columns of ``columns`` the model does not otherwise use.

    Left out: the response, every grouping factor's variables, the offsets' variables and
    ``exclude`` (weights, residual-structure variables).  A formula without ``.`` is returned as it is.
    """
    if not parsed.has_dot:
        return parsed
    used = response_variables(parsed) | {name for term in parsed.random for name in term.factor} | set(exclude)
    used |= {name for expr in parsed.offsets for name in expression_variables(expr)}
    others = [str(c) for c in columns if str(c) not in used]
    if not others:
        raise FormulaError(f"'.' in {parsed.text!r} stands for no column: the data have no other columns.")
    group = "(" + " + ".join(quote_name(name) for name in others) + ")"
    pieces = [piece.strip() for piece, _ in _split_top_level(parsed.fixed, "+", 0, parsed.fixed)]
    pieces = [group + piece[1:] if _DOT.fullmatch(piece) else piece for piece in pieces]
    expanded = dataclasses.replace(parsed, fixed=" + ".join(pieces), has_dot=False)
    _check_expressions(expanded)
    return expanded


def with_fixed_part(parsed: ParsedFormula, fixed: str | None) -> ParsedFormula:
    """``parsed`` with its fixed part replaced by ``fixed`` (a saved expansion of ``.``), checked
    as every formula is; ``None`` leaves it as it is."""
    if fixed is None or (fixed == parsed.fixed and not parsed.has_dot):
        return parsed
    replaced = dataclasses.replace(parsed, fixed=str(fixed), has_dot=False)
    _check_expressions(replaced)
    return replaced


def _check_expressions(parsed: ParsedFormula) -> None:
    """Refuse, before any evaluation, a formula whose pieces are not safe expressions."""
    fixed = [] if parsed.has_dot else [parsed.fixed if parsed.counts else parsed.fixed_formula]
    counts = [f"0 + I({expr})" for expr in parsed.counts]
    pieces = fixed + counts + [f"0 + I({expr})" for expr in parsed.offsets] + [term.expr for term in parsed.random]
    for piece in pieces:
        try:
            formula = Formula(piece)
        except (FormulaicError, SyntaxError, ValueError) as exc:
            raise FormulaError(f"Cannot parse {piece!r}: {exc}") from exc
        parts = [formula.lhs, formula.rhs] if hasattr(formula, "rhs") else [formula]
        factor_variables([factor for part in parts for term in part for factor in term.factors])
