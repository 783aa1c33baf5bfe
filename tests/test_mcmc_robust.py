"""Robust defaults: stuck chains are restarted during warmup, so NUTS with default settings
gets the right answer on posteriors with a trap region; without the restart it does not.

The trap models (our own) have one real mode, N(b, 1) in z[0] (and N(0, 1) in z[1]), and
a trap of negligible mass (< e^-13 of the total) that covers the half z[0] < 0 of the
initialisation box uniform(-2, 2): a chain that starts there rolls into the trap and
cannot leave it (a barrier of >= 25 nats). Three traps, all of one family (so one
compiled program serves them, their shapes passed as data):

* ``minor``: a narrow Gaussian minor mode N(-3.5, 0.5^2) with weight e^-20;
* ``steep``: a cone -15 - 100 |x + 0.5|: gradient 100, the step size collapses;
* ``flat``: a plateau at -15 on [-2, 0] (zero gradient) with steep walls.

Which chains start in the trap depends on the key: with 8 chains, for any key, some
chain starts in the trap and some chain outside it with probability 1 - 2 / 2^8 = 0.992
(the tests use key 0 and fail for the rare key where all or no chains start inside).
Reference: the posterior of z[0] is N(b, 1) to within 1e-5 (the trap's mass); tolerance
4 Monte Carlo standard errors from the draws' bulk ESS.
"""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.distributions import constraints

import ppl_posteriors as pp
from ppl_posteriors.mcmc import restart
from ppl_posteriors.results import compat

# trap shapes: (log weight, centre m, |x - m| slope, curvature, wall lo, wall hi, wall slope, main mode b)
TRAPS = {
    "minor": (-20.0 + np.log(2.0), -3.5, 0.0, 4.0, -1e3, 1e3, 0.0, 9.36),
    "steep": (-15.0, -0.5, 100.0, 0.0, -1e3, 1e3, 0.0, 11.4),
    "flat": (-15.0, -1.0, 0.0, 0.0, -2.0, 0.0, 100.0, 8.0),
}


def trap_model(shape):
    logw, m, k1, k2, lo, hi, c, b = (shape[i] for i in range(8))
    z = numpyro.sample("z", dist.ImproperUniform(constraints.real_vector, (), (2,)))
    x = z[0]
    trap = logw - k1 * jnp.abs(x - m) - 0.5 * k2 * (x - m) ** 2 - c * (jnp.maximum(x - hi, 0) + jnp.maximum(lo - x, 0))
    numpyro.factor("lp", jnp.logaddexp(-0.5 * (x - b) ** 2, trap) - 0.5 * z[1] ** 2)


CFG = pp.NUTS(num_chains=8, num_warmup=300, num_samples=300)


def _mcse_check(draws, mean, sd):
    """|sample mean - mean| and |sample sd - sd| within 4 MCSE (bulk ESS)."""
    ess = float(compat.ess(draws[..., None], "bulk")[0])
    m, s = draws.mean(), draws.std()
    assert abs(m - mean) < 4 * s / np.sqrt(ess), (m, mean, ess)
    assert abs(s - sd) < 4 * s / np.sqrt(2 * ess), (s, sd, ess)


@pytest.mark.parametrize("kind", list(TRAPS))
def test_default_nuts_escapes_trap(kind):
    shape = np.array(TRAPS[kind])
    idata = pp.infer(trap_model, shape, method=CFG, rng_key=0, progress=False)
    z = idata.posterior["z"].values
    _mcse_check(z[..., 0], TRAPS[kind][-1], 1.0)
    _mcse_check(z[..., 1], 0.0, 1.0)
    a = idata.attrs
    assert a["status"] == "success", a["status_messages"]
    assert a["num_restarted_chains"] >= 1
    assert a["restart_checkpoints"] == str(list(restart.checkpoints(CFG.num_warmup)))
    assert "restarted during warmup" in a["status_messages"]
    assert a["rhat_max"] < 1.01 and a["ess_tail_min"] > 0 and "z[0]" in a["ess_tail_worst"]


def test_without_restart_the_answer_is_wrong_and_flagged():
    shape = np.array(TRAPS["minor"])
    cfg = pp.NUTS(num_chains=8, num_warmup=300, num_samples=300, restart_stuck=False)
    with pytest.warns(pp.NumericalWarning, match=r"R-hat .* z\[0\]"):
        idata = pp.infer(trap_model, shape, method=cfg, rng_key=0, progress=False)
    z0 = idata.posterior["z"].values[..., 0]
    assert abs(z0.mean() - TRAPS["minor"][-1]) > 2.0  # chains left in the minor mode
    assert idata.attrs["num_restarted_chains"] == 0 and idata.attrs["restart_checkpoints"] == "[]"


@pytest.mark.filterwarnings("ignore::ppl_posteriors.NumericalWarning")  # 50 draws: low ESS
def test_one_chain_is_a_no_op():
    shape = np.array(TRAPS["minor"])
    cfg = pp.NUTS(num_chains=1, num_warmup=100, num_samples=50)
    idata = pp.infer(trap_model, shape, method=cfg, rng_key=0, progress=False)
    assert idata.attrs["restart_checkpoints"] == "[]" and idata.attrs["num_restarted_chains"] == 0


def test_checkpoints():
    assert restart.checkpoints(1000) == (75, 150, 250)
    assert restart.checkpoints(300) == (22, 45, 75)
    assert restart.checkpoints(74) == () and restart.checkpoints(75) == (19,)
    assert restart.stuck_threshold(4) == 10.0 and restart.stuck_threshold(400) == 20.0


def _decide(lp, mass, rise=None):
    lp, mass = jnp.asarray(lp, float), jnp.asarray(mass, float)
    rise = jnp.zeros_like(lp) if rise is None else jnp.asarray(rise, float)
    stuck, donor, gap = restart.decide(lp, mass, rise, 10.0)
    return np.asarray(stuck).tolist(), np.asarray(donor).tolist()


def test_decide_rules():
    # a majority of chains in a trap: the minority in the main mode restarts them, best first
    stuck, donor = _decide([-30, 0, -31, -29, 1], [-30, 0, -31, -29, 1])
    assert stuck == [True, False, True, True, False]
    assert donor == [4, 1, 1, 4, 4]  # stuck chains cycle through the good ones, best (4) first
    # a wide mode: lower log density, as much mass -> kept
    assert _decide([-20, 0, 0], [0, 0, 0])[0] == [False, False, False]
    # a narrow spike of higher density and little mass -> kept (the log density is not below)
    assert _decide([5, 0, 0], [-30, 0, 0])[0] == [False, False, False]
    # still climbing fast (a transient) -> kept; stationary far below -> restarted
    assert _decide([-30, 0, 0], [-30, 0, 0], rise=[20, 0, 0])[0] == [False, False, False]
    assert _decide([-30, 0, 0], [-30, 0, 0], rise=[2, 0, 0])[0] == [True, False, False]
    # frozen (zero variance: log mass -inf) far below -> restarted; frozen at a typical density -> kept
    assert _decide([-30, 0, 0], [-np.inf, 0, 0])[0] == [True, False, False]
    assert _decide([-1, 0, 0], [-np.inf, 0, 0])[0] == [False, False, False]
    # all alike: nothing to do
    assert _decide([0, 0], [0, 0])[0] == [False, False]


def test_options_are_checked():
    with pytest.raises(pp.ConfigError, match="chain_layout"):
        pp.NUTS(chain_layout="pmap")
    with pytest.raises(pp.ConfigError, match="restart_stuck"):
        pp.NUTS(restart_stuck="yes")


def student_t():
    numpyro.sample("x", dist.StudentT(3.0, 0.0, 1.0))


def test_heavy_tails_quantiles_and_tail_ess_reported():
    """Student-t(3): the 5 % and 95 % quantiles within 4 MCSE (from the tail ESS, the ESS of the
    quantile indicators; Vehtari et al. 2021) of the exact ones; tail ESS in attrs."""
    from scipy import stats

    idata = pp.infer(student_t, method=pp.NUTS(num_warmup=500, num_samples=1000), rng_key=0, progress=False)
    x = idata.posterior["x"].values
    ess_tail = idata.attrs["ess_tail_min"]
    assert "x " in idata.attrs["ess_tail_worst"] and ess_tail > 400
    for p in (0.05, 0.95):
        q = stats.t.ppf(p, 3.0)
        se = np.sqrt(p * (1 - p) / ess_tail) / stats.t.pdf(q, 3.0)
        assert abs(np.quantile(x, p) - q) < 4 * se, (p, np.quantile(x, p), q, se)
