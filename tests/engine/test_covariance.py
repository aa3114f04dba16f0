"""Covariance structures: parameter counts, bounds and the factor they build."""

import numpy as np
import pytest

from mixedfx.engine.covariance import CovStructure
from mixedfx.errors import OptionError
from mixedfx.spec.structures import canonical_structure


@pytest.mark.parametrize(
    "kind, q, k",
    [("identity", 3, 1), ("independent", 3, 3), ("exchangeable", 3, 2), ("unstructured", 3, 6), ("exchangeable", 1, 1)],
)
def test_parameter_counts(kind, q, k):
    s = CovStructure(kind, q)
    assert s.n_params == k
    assert s.start().size == k == s.lower_bounds().size == s.upper_bounds().size


def test_unstructured_uses_lme4_column_order():
    lam = CovStructure("unstructured", 3).factor(np.arange(1.0, 7.0))
    expected = np.array([[1.0, 0, 0], [2.0, 4.0, 0], [3.0, 5.0, 6.0]])
    np.testing.assert_array_equal(lam, expected)


def test_exchangeable_factor_gives_equal_variances_and_covariances():
    lam = CovStructure("exchangeable", 4).factor(np.array([2.0, 0.3]))
    G = lam @ lam.T
    np.testing.assert_allclose(np.diag(G), 4.0)
    off = G[~np.eye(4, dtype=bool)]
    np.testing.assert_allclose(off, 4.0 * 0.3)


def test_identity_and_independent():
    np.testing.assert_allclose(CovStructure("identity", 2).factor(np.array([3.0])), 3 * np.eye(2))
    np.testing.assert_allclose(CovStructure("independent", 2).factor(np.array([1.0, 2.0])), np.diag([1.0, 2.0]))


def test_boundary_detection():
    s = CovStructure("unstructured", 2)
    assert s.on_boundary(np.array([1.0, 0.5, 0.0]))
    assert not s.on_boundary(np.array([1.0, 0.5, 0.2]))


def test_aliases_and_unknown_names():
    assert canonical_structure("uns") == "unstructured"
    assert canonical_structure("EXC") == "exchangeable"
    with pytest.raises(OptionError, match="Unknown covariance structure 'banana'"):
        canonical_structure("banana")
