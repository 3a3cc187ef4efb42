"""FD and KID against formulas written out here, on features whose answer is known (not just 'zero for equal sets')."""
import numpy as np
import pytest
from scipy import linalg

from immiscible.evaluation.distances import feature_stats, frechet_distance, kernel_distance


def _stats(x):
    """Mean and unbiased covariance, written out (not through feature_stats)."""
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / (len(x) - 1)


def _closed_form_fd(mu1, s1, mu2, s2):
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)); the trace of the root from the symmetric form
    S1^(1/2) S2 S1^(1/2), which has the same eigenvalues as S1 S2 (another route than clean-fid's sqrtm)."""
    r1 = linalg.sqrtm(s1).real
    eig = np.linalg.eigvalsh(r1 @ s2 @ r1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(eig, 0, None)).sum())


def _gaussians(d=4, n=20000, scale=2.0, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), scale * rng.normal(size=(n, d))  # N(0, I) and N(0, scale^2 I)


def test_feature_stats_are_the_mean_and_the_unbiased_covariance():
    x = np.random.default_rng(1).normal(size=(50, 3))
    mu, sigma = feature_stats(x)
    mu_ref, sigma_ref = _stats(x)
    np.testing.assert_allclose(mu, mu_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sigma, sigma_ref, rtol=1e-12, atol=1e-14)


def test_fd_sees_a_covariance_difference_and_matches_the_closed_form():
    """N(0, I) vs N(0, 4I) in d=4: the means agree, so only the covariance term can make FD positive. Population
    value d * (1 + 4 - 2 * 2) = d; the sample value must equal the closed form on the same sample statistics."""
    d = 4
    x, y = _gaussians(d=d)
    mu_x, s_x = _stats(x)
    mu_y, s_y = _stats(y)
    assert ((mu_x - mu_y) ** 2).sum() < 0.01  # the mean term is negligible: what FD finds is the covariance
    fd = frechet_distance(x, (mu_y, s_y))
    assert fd == pytest.approx(_closed_form_fd(mu_x, s_x, mu_y, s_y), rel=1e-8)
    assert fd == pytest.approx(d, abs=0.15)
    assert fd > 3.5


def test_fd_of_a_mean_shift_with_different_covariances():
    """Both terms at once: N(m, I) vs N(0, diag(1, 4, 9)), population value |m|^2 + sum (sqrt(a) - sqrt(b))^2."""
    rng = np.random.default_rng(2)
    m = np.array([1.0, -2.0, 0.5])
    x = rng.normal(size=(20000, 3)) + m
    y = rng.normal(size=(20000, 3)) * np.array([1.0, 2.0, 3.0])
    fd = frechet_distance(x, _stats(y))
    assert fd == pytest.approx(_closed_form_fd(*_stats(x), *_stats(y)), rel=1e-8)
    assert fd == pytest.approx((m ** 2).sum() + 0 + 1 + 4, abs=0.2)


def test_fd_is_symmetric_and_zero_for_identical_sets():
    x, y = _gaussians(d=4, n=5000, seed=3)
    xy = frechet_distance(x, _stats(y))
    yx = frechet_distance(y, _stats(x))
    assert xy == pytest.approx(yx, rel=1e-8)
    assert frechet_distance(x, _stats(x)) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(x, feature_stats(x)) == pytest.approx(0.0, abs=1e-8)


def _unbiased_mmd2(x, y):
    """Unbiased MMD^2 (Gretton et al. 2012, Eq. 3) with KID's kernel k(a, b) = (a.b / d + 1)^3, written with loops
    over the diagonal removed explicitly."""
    d = x.shape[1]
    m, n = len(x), len(y)

    def k(a, b):
        return (a @ b.T / d + 1) ** 3

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    off = lambda g: g.sum() - np.trace(g)  # noqa: E731
    return off(kxx) / (m * (m - 1)) + off(kyy) / (n * (n - 1)) - 2 * kxy.mean()


def test_kid_equals_the_unbiased_mmd_with_the_cubic_kernel():
    """One subset at least as large as both sets is the whole of each set (clean-fid draws m = min(N1, N2,
    max_subset_size) rows without replacement, a mere reordering here), so KID is the estimator itself."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 8))
    y = rng.normal(size=(300, 8)) * 1.5 + 0.3
    ref = _unbiased_mmd2(x, y)
    assert ref > 0.05  # clearly different distributions: the comparison is not between two near-zero numbers
    kid = kernel_distance(x, y, num_subsets=1, max_subset_size=1000, seed=0)
    assert kid == pytest.approx(ref, rel=1e-6)
    assert kernel_distance(y, x, num_subsets=1, max_subset_size=300, seed=5) == pytest.approx(ref, rel=1e-6)
    # and a biased estimator (diagonal kept) would be measurably different: the test can tell them apart
    biased = ((x @ x.T / 8 + 1) ** 3).mean() + ((y @ y.T / 8 + 1) ** 3).mean() - 2 * ((x @ y.T / 8 + 1) ** 3).mean()
    assert abs(biased - ref) > 1e-3 * abs(ref)


def test_kid_of_the_same_distribution_is_near_zero_and_below_a_shifted_one():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(400, 6)), rng.normal(size=(400, 6))
    same = kernel_distance(x, y, num_subsets=1, max_subset_size=400)
    assert same == pytest.approx(_unbiased_mmd2(x, y), rel=1e-6, abs=1e-12)
    assert abs(same) < 0.05
    assert kernel_distance(x, y + 0.5, num_subsets=1, max_subset_size=400) > 0.1


def test_kid_is_reproducible_for_a_seed_and_leaves_the_global_rng_alone():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(500, 5)), rng.normal(size=(400, 5)) + 0.2
    np.random.seed(123)
    state = np.random.get_state()
    a = kernel_distance(x, y, num_subsets=7, max_subset_size=50, seed=3)
    after = np.random.get_state()
    assert after[0] == state[0] and np.array_equal(after[1], state[1]) and after[2:] == state[2:]
    assert kernel_distance(x, y, num_subsets=7, max_subset_size=50, seed=3) == a
    assert kernel_distance(x, y, num_subsets=7, max_subset_size=50, seed=4) != a  # the seed picks the subsets
