"""Parsing of lme4-style mixed-model formulas.

A formula ``y ~ fixed + (expr | g) + (expr || g1/g2)`` is split into its response, its
fixed-effects part (handed to formulaic as it is) and its random-effects terms.

Random terms follow lme4:

- ``(expr | g)``: the columns of ``expr`` vary by ``g`` with an unstructured covariance;
- ``(expr || g)``: the same columns with independent (diagonal) covariance;
- ``g1/g2`` expands to the two factors ``g1`` and ``g2:g1`` (``g2`` nested in ``g1``);
- ``g1:g2`` is the interaction factor (one level for each observed pair).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

from formulaic import Formula
from formulaic.errors import FormulaicError

from ..errors import FormulaError, caret
from .expressions import factor_variables
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
    """A formula split into response, fixed part and random terms."""

    text: str
    response: str
    fixed: str
    random: tuple[RandomTerm, ...] = field(default_factory=tuple)

    @property
    def fixed_formula(self) -> str:
        """The fixed part as a complete formaulaic formula ``response ~ fixed``."""
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
    for piece, offset in _split_top_level(rhs, "+", tilde + 1, text):
        if not piece.strip():
            raise FormulaError("Empty term (two '+' in a row?):" + caret(text, offset))
        if _wrapped_in_parentheses(piece) and _find_bar(piece.strip()[1:-1]) >= 0:
            random_terms.extend(_parse_random(piece, offset, text))
        elif "|" in piece:
            raise FormulaError(
                "A '|' must be inside a parenthesised random term such as (1 | g):"
                + caret(text, offset + piece.index("|"))
            )
        else:
            fixed_pieces.append(piece.strip())
    fixed = " + ".join(fixed_pieces) if fixed_pieces else "1"
    parsed = ParsedFormula(text=original, response=response, fixed=fixed, random=tuple(random_terms))
    _check_expressions(parsed)
    return parsed


def _check_expressions(parsed: ParsedFormula) -> None:
    """Refuse, before any evaluation, a formula whose pieces are not safe expressions."""
    pieces = [parsed.fixed_formula] + [term.expr for term in parsed.random]
    for piece in pieces:
        try:
            formula = Formula(piece)
        except (FormulaicError, SyntaxError, ValueError) as exc:
            raise FormulaError(f"Cannot parse {piece!r}: {exc}") from exc
        parts = [formula.lhs, formula.rhs] if hasattr(formula, "rhs") else [formula]
        factor_variables([factor for part in parts for term in part for factor in term.factors])
