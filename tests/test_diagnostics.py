"""MCMC diagnostics on hand-built draws: R-hat and ESS per element, latent sites judged,
deterministic sites listed for information, constant elements ignored."""

import re

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import ppl_posteriors as pp
from ppl_posteriors.results.arviz import to_inference_data
from ppl_posteriors.results.raw import RawPosterior

CHAINS, DRAWS = 4, 1000


def model():
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("k", 6):
        theta = numpyro.sample("theta", dist.Normal(0.0, 1.0))
    numpyro.sample("L", dist.LKJCholesky(2, 1.0))  # L[0,0] = 1 and L[0,1] = 0 in every draw
    numpyro.deterministic("xy", mu * theta)


@pytest.fixture(scope="module")
def ld():
    return pp.log_density(model)


def _idata(ld, position):
    raw = RawPosterior(
        {k: jnp.asarray(v) for k, v in position.items()}, {}, None, pp.Status.SUCCESS,
        {"messages": [], "is_mcmc": True},
    )
    return to_inference_data(raw, ld, model=model, method="nuts")


def _iid(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "mu": rng.normal(size=(CHAINS, DRAWS)),
        "theta": rng.normal(size=(CHAINS, DRAWS, 6)),
        "L": rng.normal(size=(CHAINS, DRAWS, 1)),
    }


def test_well_mixed_draws_pass(ld):
    idata = _idata(ld, _iid())
    a = idata.attrs
    assert a["status"] == "success" and a["status_messages"] == ""
    assert 1.0 <= a["rhat_max"] < 1.01
    assert a["ess_bulk_min"] > 100 * CHAINS and a["ess_tail_min"] > 100 * CHAINS
    assert isinstance(a["rhat_worst"], str) and len(a["rhat_worst"].split(", ")) == 3


def test_deterministic_disagreement_does_not_set_the_status(ld):
    """mu and theta[0] are N(0, 1) in every chain, but correlated +0.9 in two chains and -0.9
    in the others, so the deterministic xy[0] = mu * theta[0] has chains that disagree."""
    pos = _iid(1)
    rng = np.random.default_rng(2)
    rho = np.array([0.9, 0.9, -0.9, -0.9])[:, None]
    pos["theta"][..., 0] = rho * pos["mu"] + np.sqrt(1 - rho**2) * rng.normal(size=(CHAINS, DRAWS))
    idata = _idata(ld, pos)
    a = idata.attrs
    assert a["rhat_max"] < 1.01  # latent sites only
    assert a["rhat_max_deterministic"] > 1.2
    assert a["status"] == "success" and a["status_messages"] == ""
    assert "xy" not in a["rhat_worst"]


def test_a_shifted_chain_names_the_worst_three_latent_elements(ld):
    pos = _iid(3)
    for k in ("mu", "theta"):  # chain means exactly 0, so the shifts alone order the R-hats
        pos[k] -= pos[k].mean(axis=1, keepdims=True)
    pos["mu"][2] += 1.2
    for j, shift in zip([4, 1, 5, 3], [0.9, 0.7, 0.5, 0.45], strict=True):
        pos["theta"][2, :, j] += shift
    idata = _idata(ld, pos)
    a = idata.attrs
    assert a["status"] == "poor_mixing"
    msg = a["status_messages"]
    rhat = {
        lab: float(v)
        for lab, v in re.findall(r"([\w\[\],]+) (\d\.\d{3})", msg.split("(deterministic")[0])
    }
    m = re.search(r"max R-hat (\d\.\d{3}) > 1\.01: (.*?) and (\d+) more: the chains disagree", msg)
    assert m, msg
    named = [s.split(" ")[0] for s in m.group(2).split(", ")]
    assert named == ["mu", "theta[4]", "theta[1]"]  # worst first, at most three
    assert int(m.group(3)) >= 2  # theta[5], theta[3]: R-hat about 1 + 3 shift^2 / 32
    assert float(m.group(1)) == pytest.approx(a["rhat_max"], abs=5e-4) == rhat["mu"]
    assert rhat["mu"] > rhat["theta[4]"] > rhat["theta[1]"] > 1.01
    # mu * theta moves with mu: the deterministic sites are listed, for information only
    assert "(deterministic, for information: xy[" in msg
    with pytest.warns(pp.NumericalWarning, match=r"max R-hat .*: mu "):
        from ppl_posteriors.api import _report

        _report(idata, pp.NUTS())


def test_low_ess_warns_and_names_the_element(ld):
    pos = _iid(4)
    rng = np.random.default_rng(5)
    x = np.zeros((CHAINS, DRAWS))
    x[:, 0] = rng.normal(size=CHAINS)
    for t in range(1, DRAWS):  # AR(1), stationary N(0, 1): bulk ESS about 4000 * 0.05 / 1.95
        x[:, t] = 0.95 * x[:, t - 1] + np.sqrt(1 - 0.95**2) * rng.normal(size=CHAINS)
    pos["theta"][..., 2] = x
    a = _idata(ld, pos).attrs
    assert a["status"] == "poor_mixing"
    assert a["ess_bulk_min"] < 400 and a["ess_tail_min"] < 400
    assert re.search(r"ESS below 400 \(100 per chain\): bulk theta\[2\] \d+; tail theta\[2\] \d+",
                     a["status_messages"]), a["status_messages"]


def test_constant_elements_do_not_warn(ld):
    """L[0,0] = 1 and L[0,1] = 0 in every draw: ArviZ gives them R-hat NaN; they are skipped."""
    idata = _idata(ld, _iid(6))
    post = idata.posterior["L"].values
    assert np.all(post[..., 0, 0] == 1.0) and np.all(post[..., 0, 1] == 0.0)
    a = idata.attrs
    assert a["status"] == "success"
    assert np.isfinite(a["rhat_max"]) and np.isfinite(a["ess_bulk_min"]) and np.isfinite(a["ess_tail_min"])
    assert "L[0,0]" not in a["rhat_worst"] and "L[0,1]" not in a["rhat_worst"]


def test_a_stuck_chain_warns(ld):
    """Constant within one chain but not across chains is a failure to move, not a constant."""
    pos = _iid(7)
    pos["mu"][1] = 0.3
    a = _idata(ld, pos).attrs
    assert a["status"] == "poor_mixing" and "max R-hat" in a["status_messages"]
    assert re.search(r": mu (inf|\d+\.\d{3})", a["status_messages"])
