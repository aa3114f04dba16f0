"""Stata ``mixed`` syntax: ``mixedfx.mixed("y x1 x2 || id: x1, cov(uns) || ..., reml stddev", data)``.

Grammar (a subset of Stata's ``mixed``, enough for the lecture's commands as written):

    [mixed] depvar [indepvars] [, noconstant] || levelvar: [varlist] [, re_options] [|| ...] [, options]

- fixed part: variables, ``i.var`` (factor), ``c.var`` (continuous), ``a#b`` (interaction),
  ``a##b`` (full factorial);
- each ``||`` adds a level nested in the previous one (the first is the highest level);
- ``re_options``: ``noconstant``, ``covariance(identity|independent|exchangeable|unstructured)``
  (default independent, as Stata);
- ``options``: ``mle``/``ml``, ``reml``, ``variance``, ``stddev``, ``level(#)``,
  ``residuals(TYPE[, t(VAR) by(VAR)])`` (with ``|| id:, noconstant`` a marginal model).

Stata estimates by ML unless ``reml`` is given; so does this front end.
"""

from __future__ import annotations

import re

from ..errors import FormulaError, OptionError, suggest
from .options import confidence_level
from .structures import canonical_structure

RE_OPTIONS = {"noconstant", "nocons", "covariance", "cov"}
GLOBAL_OPTIONS = {"mle", "ml", "reml", "variance", "var", "stddev", "level", "residuals"}


OPTION = r"([A-Za-z_]+)\s*(?:\(((?:[^()]|\([^()]*\))*)\))?"  # name or name(args), args may hold t(x)


def _split_options(text: str) -> tuple[str, list[tuple[str, str | None]]]:
    """``"x1 x2, cov(uns) mle"`` -> (``"x1 x2"``, [("cov", "uns"), ("mle", None)])."""
    body, _, opts = text.partition(",")
    options = []
    for match in re.finditer(OPTION, opts):
        options.append((match.group(1).lower(), match.group(2)))
    leftover = re.sub(OPTION, "", opts).strip()
    if leftover:
        raise FormulaError(f"Cannot read the options {opts.strip()!r} (unexpected {leftover!r}).")
    return body.strip(), options


def _translate_term(token: str) -> str:
    """One Stata varlist token in formulaic syntax: ``i.sex`` -> ``C(sex)``, ``a##b`` -> ``a*b``."""
    if "##" in token:
        return "*".join(_translate_term(t) for t in token.split("##"))
    if "#" in token:
        return ":".join(_translate_term(t) for t in token.split("#"))
    if token.startswith("i."):
        return f"C({token[2:]})"
    if token.startswith("c."):
        return token[2:]
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", token):
        raise FormulaError(f"{token!r} is not a Stata variable name (use i.var, c.var, a#b, a##b).")
    return token


def _level_options(options: list[tuple[str, str | None]], level: str) -> tuple[bool, str]:
    """(has constant, covariance) of one random-effects level; refuses options it does not know."""
    constant, covariance = True, "independent"
    for name, value in options:
        if name in ("noconstant", "nocons"):
            constant = False
        elif name in ("covariance", "cov"):
            if not value:
                raise OptionError(f"covariance() needs a structure at level {level!r}.")
            covariance = canonical_structure(value)
        else:
            raise OptionError(
                f"Unknown option {name!r} at level {level!r}.{suggest(name, sorted(RE_OPTIONS | GLOBAL_OPTIONS))}"
            )
    return constant, covariance


def parse_mixed(command: str) -> dict:
    """Parse a ``mixed`` command into an lme4 formula, covariance structures and options."""
    text = " ".join(command.split())
    if text.startswith("mixed "):
        text = text[len("mixed ") :]
    segments = [seg.strip() for seg in text.split("||")]
    fixed_body, fixed_opts = _split_options(segments[0])
    tokens = fixed_body.split()
    if not tokens:
        raise FormulaError("The mixed command needs a dependent variable: mixed depvar [indepvars] || level:")
    if len(segments) == 1:
        raise FormulaError("No random-effects level: add '|| levelvar:' (e.g. || id:).")
    response, regressors = tokens[0], [_translate_term(t) for t in tokens[1:]]
    fixed_constant = True
    global_opts: list[tuple[str, str | None]] = []
    for name, value in fixed_opts:
        if name in ("noconstant", "nocons"):
            fixed_constant = False
        elif name in GLOBAL_OPTIONS:
            global_opts.append((name, value))
        else:
            raise OptionError(f"Unknown option {name!r} in the fixed part.{suggest(name, sorted(GLOBAL_OPTIONS))}")
    random_terms, covariance, no_effects = [], {}, None
    outer: list[str] = []
    for segment in segments[1:]:
        if ":" not in segment:
            raise FormulaError(f"Random-effects level {segment!r} needs 'levelvar:' (e.g. '|| id:').")
        level, _, rest = segment.partition(":")
        level = level.strip()
        if level == "_all":
            raise OptionError(
                "'_all: R.var' crossed effects are not supported here; use the lme4 formula (1|a) + (1|b)."
            )
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", level):
            raise FormulaError(f"{level!r} is not a level variable name.")
        body, options = _split_options(rest)
        level_opts = [(n, v) for n, v in options if n in RE_OPTIONS]
        global_opts += [(n, v) for n, v in options if n not in RE_OPTIONS]
        constant, structure = _level_options(level_opts, level)
        variables = [_translate_term(t) for t in body.split()]
        if not variables and not constant:
            if len(segments) == 2:  # Stata: '|| id:, noconstant residuals(...)' is a marginal model
                no_effects = level
                continue
            raise FormulaError(f"Level {level!r} has no random effects (noconstant and no variables).")
        expr = " + ".join((["1"] if constant else ["0"]) + variables)
        group = ":".join([level] + outer[::-1]) if outer else level
        outer.append(level)
        random_terms.append(f"({expr} | {group})")
        covariance[group] = structure if len(variables) + constant > 1 else "identity"
    method, scale, conf, residuals = "ml", "var", 95.0, None
    for name, value in global_opts:
        if name in ("mle", "ml"):
            method = "ml"
        elif name == "reml":
            method = "reml"
        elif name in ("variance", "var"):
            scale = "var"
        elif name == "stddev":
            scale = "sd"
        elif name == "residuals":
            residuals = value
        elif name == "level":
            confidence_level(value)  # refused outside Stata's 10-99.99
            conf = float(value)
        else:
            raise OptionError(f"Unknown option {name!r}.{suggest(name, sorted(GLOBAL_OPTIONS | RE_OPTIONS))}")
    if no_effects is not None and residuals is None:
        raise FormulaError(f"Level {no_effects!r} has no random effects (noconstant and no variables).")
    fixed = " + ".join((["1"] if fixed_constant else ["0"]) + regressors)
    formula = f"{response} ~ {fixed}" + (f" + {' + '.join(random_terms)}" if random_terms else "")
    return {
        "formula": formula,
        "covariance": covariance,
        "method": method,
        "scale": scale,
        "level": conf,
        "residuals": residuals,
        "group": no_effects,
    }
