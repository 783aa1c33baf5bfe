"""B1: Laplace for a neural net (MLP 64-32-10 on sklearn digits), ours vs plain JAX and the floors.

Task (BENCHMARKS.md B1): ``load_digits``, 80/20 stratified split (random_state=0),
standardised with the training statistics (1437 train / 360 test); MLP 64-32-10 with a
tanh hidden layer, D = 2410, float32, N(0, 1) prior on every weight (prior precision 1),
written as a NumPyro model (``mlp`` below: sample sites W1, b1, W2, b2 and a Categorical
likelihood in a plate). One MAP shared by every tool: adam then L-BFGS on the same log
density, saved to bench/out/laplace_b1_map.npz and loaded on later runs.

Rows (fit = curvature + prior + the factorisation needed before predicting):

* ours: pp.Laplace's curvature x structure program (``ppl_posteriors.laplace.fit.
  fit_approximation``, what ``pp.Laplace(curvature=..., structure=...)`` runs after its MAP
  search) jitted on the shared MAP: full GGN (dense precision + Cholesky), diagonal GGN,
  diagonal empirical Fisher; "ours pp.Laplace (pp.laplace.dense layers)": the same on
  ``mlp_layers``, the same model and MAP with its layers marked by ``pp.laplace.dense``
  (exact layer formulas from the layer inputs a_n and back-propagated g_{n,r});
* plain JAX: per-datum Jacobians J_n = ∂logits_n/∂θ by ``vmap(jacrev)``, the dense
  Jᵀ H J with H_n = diag(p_n) − p_n p_nᵀ, + I, and its Cholesky; its diagonal for the
  diagonal GGN (einsum of J² with H);
* floors: one jitted matmul of the GGN contraction's shape (2410 x 14370)(14370 x 2410),
  one Cholesky of a 2410 x 2410 SPD matrix;
* laplace-torch (``import laplace``) and posteriors (``import posteriors``), PyTorch CPU,
  when they import (a ``bench`` session installs them; never CI): else marked n/a.

Predictives on the test set (each timed, compile apart): linearised with the probit
approximation (``pp.linalg.linearized_forward``, diagonal of J Σ Jᵀ, Σ applied by the
fit's factor), linearised MC (100 draws θ_s of q, f(θ*) + J (θ_s − θ*) by JVPs) and network
MC (100 forward passes at θ_s). Metrics: test NLL, accuracy, ECE (15 equal-width bins of the
top-class probability).

    python bench/laplace_b1.py [--quick] [--reps N]
"""

# ruff: noqa: I001  (common must be imported first; B1 then switches JAX back to float32)
from __future__ import annotations

import time
import traceback

import common as C  # isort: skip
import jax

jax.config.update("jax_enable_x64", False)  # B1 is float32 (common switched float64 on)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import optax  # noqa: E402
import pandas as pd  # noqa: E402
from jax.scipy.linalg import cho_solve  # noqa: E402

import ppl_posteriors as pp  # noqa: E402
from ppl_posteriors.laplace.fit import fit_approximation  # noqa: E402

SITES = ("W1", "b1", "W2", "b2")


def mlp(X, y=None):
    """MLP 64-32-10 (tanh), N(0, 1) prior on every weight, Categorical(logits) likelihood."""
    W1 = numpyro.sample("W1", dist.Normal(0.0, 1.0).expand([64, 32]).to_event(2))
    b1 = numpyro.sample("b1", dist.Normal(0.0, 1.0).expand([32]).to_event(1))
    W2 = numpyro.sample("W2", dist.Normal(0.0, 1.0).expand([32, 10]).to_event(2))
    b2 = numpyro.sample("b2", dist.Normal(0.0, 1.0).expand([10]).to_event(1))
    logits = jnp.tanh(X @ W1 + b1) @ W2 + b2
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("y", dist.Categorical(logits=logits), obs=y)


def mlp_layers(X, y=None):
    """The same model with its dense layers marked by ``pp.laplace.dense`` (same sites, same
    log density): pp.Laplace takes the exact layer formulas (BackPACK-style) for diag and full."""
    W1 = numpyro.sample("W1", dist.Normal(0.0, 1.0).expand([64, 32]).to_event(2))
    b1 = numpyro.sample("b1", dist.Normal(0.0, 1.0).expand([32]).to_event(1))
    W2 = numpyro.sample("W2", dist.Normal(0.0, 1.0).expand([32, 10]).to_event(2))
    b2 = numpyro.sample("b2", dist.Normal(0.0, 1.0).expand([10]).to_event(1))
    h = jnp.tanh(pp.laplace.dense(X, W1, "W1", b1, "b1"))
    logits = pp.laplace.dense(h, W2, "W2", b2, "b2")
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("y", dist.Categorical(logits=logits), obs=y)


def forward(p: dict, X):
    """The same network in plain JAX: logits (n, 10)."""
    return jnp.tanh(X @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]


def load_data():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, stratify=y, random_state=0)
    sc = StandardScaler().fit(Xtr)
    return (sc.transform(Xtr).astype(np.float32), ytr.astype(np.int32),
            sc.transform(Xte).astype(np.float32), yte.astype(np.int32))


def train_map(ld, steps: int) -> np.ndarray:
    """The shared MAP: adam(1e-2) for ``steps`` steps, then L-BFGS (500 steps), on ld's flat
    log density (float32); cached in bench/out/laplace_b1_map.npz."""
    path = C.OUT_DIR / "laplace_b1_map.npz"
    if path.exists():
        z = np.load(path)
        print(f"[map] loaded {path.name}: |grad| max {float(z['grad_max']):.2e}", flush=True)
        return z["map"]
    f = lambda x: -ld.flat_logdensity_fn(x)  # noqa: E731
    x0 = 0.1 * jax.random.normal(jax.random.key(0), (ld.dim,), jnp.float32)

    @jax.jit
    def run(x):
        opt = optax.adam(1e-2)

        def step(c, _):
            x, s = c
            g = jax.grad(f)(x)
            u, s = opt.update(g, s)
            return (optax.apply_updates(x, u), s), None

        (x, _), _ = jax.lax.scan(step, (x, opt.init(x)), None, length=steps)
        lb = optax.lbfgs()
        vg = optax.value_and_grad_from_state(f)

        def lstep(c, _):
            x, s = c
            v, g = vg(x, state=s)
            u, s = lb.update(g, s, x, value=v, grad=g, value_fn=f)
            return (optax.apply_updates(x, u), s), None

        (x, _), _ = jax.lax.scan(lstep, (x, lb.init(x)), None, length=500)
        return x

    t0 = time.perf_counter()
    x = np.asarray(run(x0))
    g = float(jnp.max(jnp.abs(jax.grad(f)(x))))
    C.OUT_DIR.mkdir(parents=True, exist_ok=True)
    np.savez(path, map=x, grad_max=g)
    print(f"[map] trained in {time.perf_counter() - t0:.1f} s: -log p {float(f(x)):.3f}, |grad| max {g:.2e}", flush=True)
    return x


CPU = {}  # id of a timed result -> median process CPU seconds (the shared machine's wall times drift)


def timed(fn, *args, reps: int):
    """(compile s, median run s, output) of ``jax.jit(fn)(*args)``, compile timed apart; the
    median CPU time of the process (all threads) goes to ``CPU[id(output)]``."""
    t0 = time.perf_counter()
    comp = jax.jit(fn).lower(*args).compile()
    t_c = time.perf_counter() - t0
    out = C.block(comp(*args))  # warm-up
    ts, cs = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        out = C.block(comp(*args))
        ts.append(time.perf_counter() - t0)
        cs.append(time.process_time() - c0)
    CPU[id(out)] = C.median(cs)
    return t_c, C.median(ts), out


def metrics(probs, y) -> dict:
    p = np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)
    p = p / p.sum(1, keepdims=True)
    nll = float(-np.mean(np.log(p[np.arange(len(y)), y])))
    pred, conf = p.argmax(1), p.max(1)
    acc = float(np.mean(pred == y))
    bins = np.minimum((conf * 15).astype(int), 14)
    ece = sum(abs(np.mean(pred[bins == b] == y[bins == b]) - np.mean(conf[bins == b])) * np.mean(bins == b)
              for b in range(15) if np.any(bins == b))
    return {"nll": nll, "acc": acc, "ece": float(ece)}


# --------------------------------------------------------------------------------- predictives


def predictive_fns(unravel, Xte, num_mc: int):
    """probit(mean, sigma_matvec), lin_mc(mean, draws), net_mc(mean, draws) -> probs (n, 10)."""

    def f(x):
        return forward(unravel(x), Xte)

    def probit(mean, sig):
        lf = pp.linalg.linearized_forward(f, mean, sig, diagonal=True)
        return jax.nn.softmax(lf.mean / jnp.sqrt(1 + jnp.pi * lf.cov / 8), -1)

    def lin_mc(mean, draws):
        f0, jvp = jax.linearize(f, mean)
        return jnp.mean(jax.vmap(lambda t: jax.nn.softmax(f0 + jvp(t - mean), -1))(draws), 0)

    def net_mc(mean, draws):
        return jnp.mean(jax.vmap(lambda t: jax.nn.softmax(f(t), -1))(draws), 0)

    return probit, lin_mc, net_mc


def sigma_of(approx):
    """The covariance matvec Σ g of a fitted approximation (its Cholesky / diagonal), on (D,)."""
    if hasattr(approx, "cholesky"):
        return lambda g: cho_solve((approx.cholesky, True), g)
    return lambda g: g / approx.prec


# --------------------------------------------------------------------------------- rows


def run_ours(ld, xmap, variant: str, preds, yte, num_mc: int, reps: int,
             tool: str = "ours pp.Laplace") -> tuple[dict, object]:
    curv, struct = {"full GGN": ("ggn", "full"), "diag GGN": ("ggn", "diag"), "diag EF": ("fisher", "diag")}[variant]
    cfg = pp.Laplace(curvature=curv, structure=struct)
    key = jax.random.key(1)

    def fit(mean, key):
        approx, checks, _ = fit_approximation(cfg, ld, mean, key, curv, struct)
        return approx, checks

    t_c, t_fit, out = timed(fit, jnp.asarray(xmap), key, reps=reps)
    approx, checks = out
    row = {"tool": tool, "variant": variant, "fit_compile_s": t_c, "fit_s": t_fit, "fit_cpu_s": CPU[id(out)],
           "pd": bool(checks["pd"])}
    row.update(predict_rows(approx, preds, yte, num_mc, reps))
    return row, approx


def predict_rows(approx, preds, yte, num_mc, reps) -> dict:
    probit, lin_mc, net_mc = preds
    mean = approx.mean
    draws = approx.sample_flat(jax.random.key(2), num_mc)
    out = {}
    t_c, t, probs = timed(lambda m, a: probit(m, sigma_of(a)), mean, approx, reps=reps)
    out.update({"pred_probit_s": t, **{f"{k}_probit": v for k, v in metrics(probs, yte).items()}})
    t_c, t, probs = timed(lin_mc, mean, draws, reps=reps)
    out.update({"pred_linmc_s": t, "nll_linmc": metrics(probs, yte)["nll"]})
    t_c, t, probs = timed(net_mc, mean, draws, reps=reps)
    out.update({"pred_netmc_s": t, "nll_netmc": metrics(probs, yte)["nll"]})
    return out


def plain_jax(unravel, Xtr, xmap, reps: int):
    """Dense Jᵀ H J + I by per-datum jacrev, and its Cholesky; and its diagonal."""

    def logits1(x, xi):
        return forward(unravel(x), xi[None])[0]

    def jac_h(x):
        J = jax.vmap(jax.jacrev(logits1), in_axes=(None, 0))(x, Xtr)  # (N, 10, D)
        p = jax.nn.softmax(forward(unravel(x), Xtr), -1)
        HJ = p[:, :, None] * J - p[:, :, None] * jnp.einsum("nc,ncd->nd", p, J)[:, None, :]
        return J, HJ

    def full(x):
        J, HJ = jac_h(x)
        d = x.shape[0]
        G = J.reshape(-1, d).T @ HJ.reshape(-1, d) + jnp.eye(d, dtype=x.dtype)
        return G, jnp.linalg.cholesky(G)

    def diag(x):
        J, HJ = jac_h(x)
        return jnp.einsum("ncd,ncd->d", J, HJ) + 1.0

    x = jnp.asarray(xmap)
    tc_f, t_f, out = timed(full, x, reps=reps)
    G, L = out
    tc_d, t_d, dg = timed(diag, x, reps=reps)
    return {"full": (tc_f, t_f, G, L, CPU[id(out)]), "diag": (tc_d, t_d, dg, CPU[id(dg)])}


def floors(d: int, p: int, reps: int) -> dict:
    k = jax.random.split(jax.random.key(3), 2)
    A = jax.random.normal(k[0], (d, p), jnp.float32)
    B = jax.random.normal(k[1], (p, d), jnp.float32)
    _, t_mm, o1 = timed(jnp.matmul, A, B, reps=reps)
    S = A[:, :d] @ A[:, :d].T / d + jnp.eye(d, dtype=jnp.float32)
    _, t_ch, o2 = timed(jnp.linalg.cholesky, S, reps=reps)
    return {"matmul": t_mm, "cholesky": t_ch, "matmul_cpu": CPU[id(o1)], "cholesky_cpu": CPU[id(o2)]}


def _torch_module(torch, xmap_dict):
    """A fresh ``nn.Sequential`` 64-32-10 (tanh) holding the shared MAP (torch stores Wᵀ)."""
    m = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor(np.asarray(xmap_dict["W1"]).T))
        m[0].bias.copy_(torch.tensor(np.asarray(xmap_dict["b1"])))
        m[2].weight.copy_(torch.tensor(np.asarray(xmap_dict["W2"]).T))
        m[2].bias.copy_(torch.tensor(np.asarray(xmap_dict["b2"])))
    return m


def _torch_timed(fn, reps: int, setup=None):
    """(median wall s, median process CPU s, last output) of ``fn(setup())`` over ``reps`` calls
    after one warm-up; ``setup`` (a fresh module, a new Laplace object) is not timed."""
    ts, cs, out = [], [], None
    for i in range(reps + 1):
        arg = setup() if setup is not None else None
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(arg)
        if i:
            ts.append(time.perf_counter() - t0)
            cs.append(time.process_time() - c0)
    return C.median(ts), C.median(cs), out


def _torch_ref_ggn(torch, xmap_dict, Xt):
    """Dense float64 precision Jᵀ H J + I (prior precision 1) in torch's parameter order, by
    per-datum ``jacrev``: the reference that every torch row's precision is compared with."""
    from torch.func import functional_call, jacrev, vmap

    m = _torch_module(torch, xmap_dict).double()
    p = {k: v.detach() for k, v in m.named_parameters()}
    X = Xt.double()
    J = vmap(jacrev(lambda p, x: functional_call(m, p, (x[None],))[0]), in_dims=(None, 0))(p, X)
    J = torch.cat([J[k].reshape(len(X), 10, -1) for k in p], -1)  # (N, 10, D)
    with torch.no_grad():
        pr = torch.softmax(m(X), -1)
    HJ = pr[:, :, None] * J - pr[:, :, None] * torch.einsum("nc,ncd->nd", pr, J)[:, None, :]
    return torch.einsum("ncd,nce->de", J, HJ) + torch.eye(J.shape[-1], dtype=torch.float64)


def _torch_floors(torch, S, p: int, reps: int) -> list[dict]:
    """torch's own floors, timed next to the torch rows (the machine's load drifts within a run):
    one (D x p)(p x D) float32 matmul and the Cholesky of the SPD (D, D) ``S``."""
    A, B = torch.randn(S.shape[0], p), torch.randn(p, S.shape[0])
    note = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    rows = []
    for name, variant, fn in (("floor: torch matmul", f"({S.shape[0]}x{p})({p}x{S.shape[0]})", lambda _: A @ B),
                              ("floor: torch Cholesky", f"{S.shape[0]}x{S.shape[0]}", lambda _: torch.linalg.cholesky(S))):
        t, c, _ = _torch_timed(fn, reps)
        rows.append({"tool": name, "variant": variant, "fit_s": t, "fit_cpu_s": c, "note": note})
    return rows


def _torch_probit(torch, model, Xv, var_fn):
    """Linearised probit predictive (n, 10) at ``model``'s weights: diag(J Σ Jᵀ) per test point
    with Σ applied by ``var_fn(J)`` on J (n, 10, D) -> (n, 10); used for posteriors, which has
    no predictive of its own (laplace-torch rows use ``la(x, pred_type="glm")``)."""
    from torch.func import functional_call, jacrev, vmap

    p = {k: v.detach() for k, v in model.named_parameters()}
    J = vmap(jacrev(lambda p, x: functional_call(model, p, (x[None],))[0]), in_dims=(None, 0))(p, Xv)
    J = torch.cat([J[k].reshape(len(Xv), 10, -1) for k in p], -1)
    with torch.no_grad():
        f = model(Xv)
        return torch.softmax(f / torch.sqrt(1 + torch.pi * var_fn(J) / 8), -1)


def torch_peers(xmap_dict, Xtr, ytr, Xte, yte, reps: int, num_mc: int = 100) -> list[dict]:
    """laplace-torch (backends ASDL, BackPACK, Curvlinops = its default) and posteriors, if installed.

    Same MAP (``xmap_dict``), prior precision 1, float32, full batch (1437). Every laplace-torch fit
    gets a fresh ``nn.Module`` (BackPACK and ASDL hook it in place) and a new ``Laplace`` object
    (both untimed); ``fit_s`` = ``la.fit`` + the factor it predicts with (full: ``posterior_scale``,
    the Cholesky-based P^-1/2; diag: ``posterior_precision``). Predictives: ``la(x, pred_type="glm",
    link_approx="probit")``, glm + mc and nn + mc with ``num_mc`` draws. posteriors 0.1.3:
    ``laplace.dense_ggn`` / ``diag_ggn`` / ``diag_fisher`` (empirical Fisher of the per-datum
    log-likelihood) init + update (+ Cholesky for dense); it has no predictive, so its probit is
    our torch code on its precision, and its network MC draws its ``sample`` (diag) or, since
    ``dense_ggn.sample`` fails on matrix-shaped weights (a reshape bug in 0.1.3), mean +
    L⁻ᵀ z from the Cholesky L of its precision. Medians of ``reps`` after one warm-up (wall and
    process CPU). ``vs_plain``: against G = Jᵀ H J + I in float64 torch (``_torch_ref_ggn``).
    """
    import warnings

    rows = []
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        return [{"tool": "laplace-torch", "variant": "n/a", "note": f"n/a: {type(e).__name__}: {e}"[:90]},
                {"tool": "posteriors", "variant": "n/a", "note": f"n/a: {type(e).__name__}: {e}"[:90]}]
    from importlib.metadata import version

    torch.manual_seed(0)
    Xt, yt = torch.tensor(Xtr), torch.tensor(ytr.astype(np.int64))
    Xv = torch.tensor(Xte)
    G64 = _torch_ref_ggn(torch, xmap_dict, Xt)
    rows += _torch_floors(torch, G64.float(), 10 * len(Xt), reps)

    def vs_full(P):
        return f"max|P-G|/max|G| = {float((P.double() - G64).abs().max() / G64.abs().max()):.1e} (G: torch f64)"

    def vs_diag(p, ef=False):
        if ef:
            return ""
        d = torch.diagonal(G64)
        return f"max rel err of diag = {float(((p.double() - d).abs() / d).max()):.1e}"

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import laplace as lt
            from laplace.curvature import AsdlEF, AsdlGGN, BackPackEF, BackPackGGN, CurvlinopsEF, CurvlinopsGGN
        from torch.utils.data import DataLoader, TensorDataset

        loader = DataLoader(TensorDataset(Xt, yt), batch_size=len(Xt))
        tool = f"laplace-torch {version('laplace-torch')}"
        configs = [("full GGN", "full", CurvlinopsGGN, "Curvlinops (default)"), ("full GGN", "full", AsdlGGN, "ASDL"),
                   ("full GGN", "full", BackPackGGN, "BackPACK"), ("diag GGN", "diag", BackPackGGN, "BackPACK"),
                   ("diag GGN", "diag", AsdlGGN, "ASDL"), ("diag GGN", "diag", CurvlinopsGGN, "Curvlinops (default)"),
                   ("diag EF", "diag", BackPackEF, "BackPACK"), ("diag EF", "diag", AsdlEF, "ASDL"),
                   ("diag EF", "diag", CurvlinopsEF, "Curvlinops")]
        for variant, struct, backend, bname in configs:
            try:
                def new_la(struct=struct, backend=backend):
                    return lt.Laplace(_torch_module(torch, xmap_dict), "classification", subset_of_weights="all",
                                      hessian_structure=struct, prior_precision=1.0, backend=backend)

                def fit(la, struct=struct):
                    la.fit(loader)
                    return la, (la.posterior_scale if struct == "full" else la.posterior_precision)

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t_fit, c_fit, (la, _) = _torch_timed(fit, reps, new_la)
                    P = la.posterior_precision.detach()
                    with torch.no_grad():
                        t_pr, _, probs = _torch_timed(lambda _, la=la: la(Xv, pred_type="glm", link_approx="probit"), reps)
                        t_lm, _, p_lm = _torch_timed(
                            lambda _, la=la: la(Xv, pred_type="glm", link_approx="mc", n_samples=num_mc), reps)
                        t_nm, _, p_nm = _torch_timed(
                            lambda _, la=la: la(Xv, pred_type="nn", link_approx="mc", n_samples=num_mc), reps)
                m = metrics(probs.numpy(), yte)
                rows.append({"tool": tool, "variant": variant, "fit_s": t_fit, "fit_cpu_s": c_fit,
                             "pred_probit_s": t_pr, "pred_linmc_s": t_lm, "pred_netmc_s": t_nm,
                             **{f"{k}_probit": v for k, v in m.items()},
                             "nll_linmc": metrics(p_lm.numpy(), yte)["nll"], "nll_netmc": metrics(p_nm.numpy(), yte)["nll"],
                             "vs_plain": vs_full(P) if struct == "full" else vs_diag(P, variant == "diag EF"),
                             "note": f"backend {bname} ({type(la.backend).__name__})"})
            except Exception as e:  # noqa: BLE001
                rows.append({"tool": tool, "variant": variant, "note": f"{bname}: n/a: {type(e).__name__}: {e}"[:120]})
                traceback.print_exc()
            print(f"  {tool} {variant} {bname}: done", flush=True)
    except Exception as e:  # noqa: BLE001
        rows.append({"tool": "laplace-torch", "variant": "n/a", "note": f"n/a: {type(e).__name__}: {e}"[:90]})
        traceback.print_exc()

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tensordict's FutureWarnings on posteriors' state classes
            import posteriors
        from torch.func import functional_call

        from optree.integrations.torch import tree_ravel

        tool = f"posteriors {posteriors.__version__}"
        model = _torch_module(torch, xmap_dict)
        params = {k: v.detach() for k, v in model.named_parameters()}
        shapes = [(k, v.shape, v.numel()) for k, v in params.items()]
        # posteriors ravels with optree (dict keys sorted): perm[i] = its flat index of torch's i-th weight
        mean_post, unravel_post = tree_ravel(params)
        pos = unravel_post(torch.arange(mean_post.numel(), dtype=torch.float32))
        perm = torch.cat([pos[k].reshape(-1) for k in params]).long()
        bs = 128  # GGN batches: one full batch forms a dense (14370 x 14370) loss Hessian, ~5x slower

        def forward_t(p, batch):
            out = functional_call(model, p, (batch[0],))
            return out, torch.tensor([])

        def outer_log_lik(logits, batch):
            return -torch.nn.functional.cross_entropy(logits, batch[1], reduction="sum")

        def per_sample_log_lik(p, batch):  # diag_fisher: per-datum log-likelihood, no prior (init_prec_diag)
            out = functional_call(model, p, (batch[0],))
            return -torch.nn.functional.cross_entropy(out, batch[1], reduction="none"), torch.tensor([])

        def net_mc(draws):  # draws (S, D) flat -> mean softmax (n, 10)
            def f(th):
                p, i = {}, 0
                for k, s, n in shapes:
                    p[k] = th[i:i + n].reshape(s)
                    i += n
                return torch.softmax(functional_call(model, p, (Xv,)), -1)

            with torch.no_grad():
                return torch.vmap(f)(draws).mean(0)

        lap = posteriors.laplace
        for variant, mod in (("full GGN", "dense_ggn"), ("diag GGN", "diag_ggn"), ("diag EF", "diag_fisher")):
            try:
                if mod == "dense_ggn":
                    transform = lap.dense_ggn.build(forward_t, outer_log_lik, init_prec=1.0)
                elif mod == "diag_ggn":
                    transform = lap.diag_ggn.build(forward_t, outer_log_lik, init_prec_diag=1.0)
                else:
                    transform = lap.diag_fisher.build(per_sample_log_lik, per_sample=True, init_prec_diag=1.0)

                def fit(_, mod=mod, transform=transform):
                    state = transform.init(params)
                    step = len(Xt) if mod == "diag_fisher" else bs
                    for i in range(0, len(Xt), step):
                        state, _aux = transform.update(state, (Xt[i:i + step], yt[i:i + step]))
                    return state, (torch.linalg.cholesky(state.prec) if mod == "dense_ggn" else None)

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t_fit, c_fit, (state, L) = _torch_timed(fit, reps)
                if mod == "dense_ggn":
                    P = state.prec[perm][:, perm]

                    def var_fn(J, L=L):  # diag(J Σ Jᵀ), Σ = P⁻¹ by its Cholesky, in posteriors' order
                        Jp = torch.empty_like(J)
                        Jp[..., perm] = J
                        Jf = Jp.reshape(-1, J.shape[-1])
                        return torch.einsum("md,dm->m", Jf, torch.cholesky_solve(Jf.T, L)).reshape(J.shape[:2])

                    def draw(_, L=L):  # own sampling: dense_ggn.sample has a reshape bug in 0.1.3
                        z = torch.randn(L.shape[0], num_mc)
                        return (mean_post + torch.linalg.solve_triangular(L.T, z, upper=True).T)[:, perm]
                else:
                    P = torch.cat([state.prec_diag[k].reshape(-1) for k in params])
                    var_fn = lambda J, P=P: torch.einsum("ncd,d->nc", J * J, 1 / P)  # noqa: E731

                    sample_fn = getattr(lap, mod).sample

                    def draw(_, state=state, sample=sample_fn):
                        s = sample(state, (num_mc,))
                        return torch.cat([s[k].reshape(num_mc, -1) for k in params], -1)

                probs = _torch_probit(torch, model, Xv, var_fn)
                t_nm, _, p_nm = _torch_timed(lambda _: net_mc(draw(None)), reps)
                m = metrics(probs.numpy(), yte)
                note = {"dense_ggn": f"dense_ggn b={bs} +chol; own draws (sample bug)",
                        "diag_ggn": f"diag_ggn b={bs}; draws by its sample()",
                        "diag_fisher": "diag_fisher of per-datum log-lik (EF)"}[mod]
                rows.append({"tool": tool, "variant": variant, "fit_s": t_fit, "fit_cpu_s": c_fit, "pred_netmc_s": t_nm,
                             **{f"{k}_probit": v for k, v in m.items()}, "nll_netmc": metrics(p_nm.numpy(), yte)["nll"],
                             "vs_plain": vs_full(P) if mod == "dense_ggn" else vs_diag(P, mod == "diag_fisher"),
                             "note": f"{note}; probit by us"})
            except Exception as e:  # noqa: BLE001
                rows.append({"tool": tool, "variant": variant, "note": f"{mod}: n/a: {type(e).__name__}: {e}"[:120]})
                traceback.print_exc()
            print(f"  {tool} {variant}: done", flush=True)
    except Exception as e:  # noqa: BLE001
        rows.append({"tool": "posteriors", "variant": "n/a", "note": f"n/a: {type(e).__name__}: {e}"[:90]})
        traceback.print_exc()
    return rows


def main(argv=None):
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--map-steps", type=int, default=3000)
    args = p.parse_args(argv)
    reps = args.reps or (1 if args.quick else 3)
    num_mc = 20 if args.quick else 100
    print("=" * 100)
    print(f"B1 Laplace for an MLP 64-32-10 on digits, float32; jax {jax.__version__} ({jax.default_backend()}), "
          f"numpyro {numpyro.__version__}, ppl_posteriors {pp.__version__}; 1 warm-up + {reps} timed reps (medians)")
    print("=" * 100, flush=True)
    t_start = time.perf_counter()
    Xtr, ytr, Xte, yte = load_data()
    ld = pp.log_density(mlp, jnp.asarray(Xtr), y=jnp.asarray(ytr))
    assert [n for n, _ in ld.layout] and ld.dim == 2410, (ld.layout, ld.dim)
    xmap = train_map(ld, args.map_steps)
    unravel = ld.unravel
    m_map = metrics(jax.nn.softmax(forward(unravel(jnp.asarray(xmap)), Xte), -1), yte)
    preds = predictive_fns(unravel, jnp.asarray(Xte), num_mc)

    fl = floors(ld.dim, 10 * len(Xtr), reps)
    ref = plain_jax(unravel, jnp.asarray(Xtr), xmap, reps)
    rows = [{"tool": "MAP only", "variant": "-", **{f"{k}_probit": v for k, v in m_map.items()}}]
    rows.append({"tool": "floor: matmul", "variant": f"({ld.dim}x{10 * len(Xtr)})({10 * len(Xtr)}x{ld.dim})",
                 "fit_s": fl["matmul"], "fit_cpu_s": fl["matmul_cpu"]})
    rows.append({"tool": "floor: Cholesky", "variant": f"{ld.dim}x{ld.dim}", "fit_s": fl["cholesky"],
                 "fit_cpu_s": fl["cholesky_cpu"]})
    tc, t, G, L, cpu = ref["full"]
    from ppl_posteriors.laplace.structures import DiagGaussian, FullGaussian

    idx = jnp.arange(ld.dim)
    ref_full = FullGaussian(jnp.asarray(xmap), idx, G, L)
    rows.append({"tool": "plain JAX J^T H J", "variant": "full GGN", "fit_compile_s": tc, "fit_s": t, "fit_cpu_s": cpu,
                 **predict_rows(ref_full, preds, yte, num_mc, reps)})
    tc, t, dg, cpu = ref["diag"]
    ref_diag = DiagGaussian(jnp.asarray(xmap), idx, dg)
    rows.append({"tool": "plain JAX J^T H J", "variant": "diag GGN", "fit_compile_s": tc, "fit_s": t, "fit_cpu_s": cpu,
                 **predict_rows(ref_diag, preds, yte, num_mc, reps)})
    exact = {}
    ld_layers = pp.log_density(mlp_layers, jnp.asarray(Xtr), y=jnp.asarray(ytr))
    assert ld_layers.layout == ld.layout  # same sites, same flat order: the same MAP applies
    ef_generic = None
    for tool, model_ld in (("ours pp.Laplace", ld), (LAYERS_TOOL, ld_layers)):
        for variant in ("full GGN", "diag GGN", "diag EF"):
            t0 = time.perf_counter()
            row, approx = run_ours(model_ld, xmap, variant, preds, yte, num_mc, reps, tool=tool)
            key = variant if tool == "ours pp.Laplace" else f"layers {variant}"
            if variant == "full GGN":
                err = float(jnp.max(jnp.abs(approx.precision - G)) / jnp.max(jnp.abs(G)))
                exact[key] = err
                row["vs_plain"] = f"max|P-G|/max|G| = {err:.1e}"
            elif variant == "diag GGN":
                err = float(jnp.max(jnp.abs(approx.prec - dg) / dg))
                exact[key] = err
                row["vs_plain"] = f"max rel err of diag = {err:.1e}"
            elif ef_generic is None:
                ef_generic = approx.prec
            else:
                err = float(jnp.max(jnp.abs(approx.prec - ef_generic) / ef_generic))
                exact[key] = err
                row["vs_plain"] = f"max rel diff to generic EF = {err:.1e}"
            rows.append(row)
            print(f"  {tool} {variant}: done in {time.perf_counter() - t0:.1f} s", flush=True)
    rows += torch_peers(unravel(jnp.asarray(xmap)), Xtr, ytr, Xte, yte, reps, num_mc)
    df = pd.DataFrame(rows)
    cols = ["tool", "variant", "fit_compile_s", "fit_s", "fit_cpu_s", "pred_probit_s", "pred_linmc_s", "pred_netmc_s",
            "nll_probit", "acc_probit", "ece_probit", "nll_linmc", "nll_netmc", "vs_plain", "note"]
    df = df[[c for c in cols if c in df.columns]]
    C.print_table("B1 Laplace MLP 64-32-10 on digits (float32)", df)

    ours_full = df[(df.tool == "ours pp.Laplace") & (df.variant == "full GGN")].iloc[0]
    ours_diag = df[(df.tool == "ours pp.Laplace") & (df.variant == "diag GGN")].iloc[0]
    plain_full = df[(df.tool == "plain JAX J^T H J") & (df.variant == "full GGN")].iloc[0]
    lay_full = df[(df.tool == LAYERS_TOOL) & (df.variant == "full GGN")].iloc[0]
    lay_diag = df[(df.tool == LAYERS_TOOL) & (df.variant == "diag GGN")].iloc[0]
    lay_ef = df[(df.tool == LAYERS_TOOL) & (df.variant == "diag EF")].iloc[0]
    ours_ef = df[(df.tool == "ours pp.Laplace") & (df.variant == "diag EF")].iloc[0]
    rat = pd.DataFrame([
        {"ratio": "ours full GGN fit / matmul floor", "value": ours_full.fit_s / fl["matmul"], "target": "<= 1.3"},
        {"ratio": "ours full GGN fit / matmul floor (CPU time)", "value": ours_full.fit_cpu_s / fl["matmul_cpu"],
         "target": "<= 1.3"},
        {"ratio": "ours full GGN fit / (matmul + Cholesky floors)", "value": ours_full.fit_s / (fl["matmul"] + fl["cholesky"]),
         "target": ""},
        {"ratio": "ours full GGN fit / plain JAX", "value": ours_full.fit_s / plain_full.fit_s, "target": "< 1"},
        {"ratio": "ours full GGN fit / plain JAX (CPU time)", "value": ours_full.fit_cpu_s / plain_full.fit_cpu_s,
         "target": "< 1"},
        {"ratio": "ours diag GGN fit / plain JAX diag", "value": ours_diag.fit_s / df[(df.tool == "plain JAX J^T H J")
                                                                                   & (df.variant == "diag GGN")].iloc[0].fit_s,
         "target": ""},
        {"ratio": "ours full GGN precision vs plain (max rel)", "value": exact["full GGN"], "target": "~1e-6 (float32)"},
        {"ratio": "ours diag GGN vs plain (max rel)", "value": exact["diag GGN"], "target": "exact (float32 round-off)"},
        {"ratio": "ours full GGN probit NLL - plain", "value": ours_full.nll_probit - plain_full.nll_probit, "target": "0"},
        {"ratio": "layers: full GGN fit / matmul floor", "value": lay_full.fit_s / fl["matmul"], "target": "<= 1.3"},
        {"ratio": "layers: full GGN fit / matmul floor (CPU time)", "value": lay_full.fit_cpu_s / fl["matmul_cpu"],
         "target": "<= 1.3"},
        {"ratio": "layers: full GGN fit / Cholesky floor", "value": lay_full.fit_s / fl["cholesky"], "target": ""},
        {"ratio": "layers: full GGN fit / plain JAX", "value": lay_full.fit_s / plain_full.fit_s, "target": "< 1"},
        {"ratio": "layers: diag GGN fit / plain JAX diag", "value": lay_diag.fit_s / df[(df.tool == "plain JAX J^T H J")
                                                                                    & (df.variant == "diag GGN")].iloc[0].fit_s,
         "target": "BackPACK 0.041 s"},
        {"ratio": "layers: diag GGN fit (s)", "value": lay_diag.fit_s, "target": "<= BackPACK 0.041 s (2 cores)"},
        {"ratio": "layers: diag EF fit / generic diag EF", "value": lay_ef.fit_s / ours_ef.fit_s, "target": ""},
        {"ratio": "layers: full GGN precision vs plain (max rel)", "value": exact["layers full GGN"],
         "target": "~1e-6 (float32)"},
        {"ratio": "layers: diag GGN vs plain (max rel)", "value": exact["layers diag GGN"],
         "target": "exact (float32 round-off)"},
        {"ratio": "layers: diag EF vs generic diag EF (max rel)", "value": exact["layers diag EF"],
         "target": "exact (round-off)"},
    ])
    C.print_table("B1 ratios and targets", rat, "{:.3g}")
    tag = "laplace_b1_quick" if args.quick else "laplace_b1"
    C.save_table(tag, df, {"reps": reps, "num_mc": num_mc})
    C.save_table(tag + "_ratios", rat)
    print(f"\nB1 total {time.perf_counter() - t_start:.0f} s; tables in {C.OUT_DIR}/{tag}*.csv")
    print(LEGEND)


LAYERS_TOOL = "ours pp.Laplace (pp.laplace.dense layers)"

LEGEND = """Columns: fit_s = median wall time of the jitted fit (fit_cpu_s: its median CPU time, all threads) (compile apart in fit_compile_s): ours = curvature + prior
+ Cholesky (full) or the diagonal (diag), plus pp.Laplace's checks (finite, positive definite, condition
number); plain JAX = per-datum jacrev Jacobians + Jᵀ H J + I + Cholesky. pred_*_s: the predictive on the 360
test points (probit: diag(J Σ Jᵀ) by one VJP per output and Σ by the fit's factor; linmc/netmc: 100 draws).
nll/acc/ece_probit: test metrics of the probit predictive; nll_linmc / nll_netmc: of the MC predictives.
"(pp.laplace.dense layers)": the same model and MAP with the layers marked (``mlp_layers``): exact
layer formulas from the layer inputs and back-propagated output factors (BackPACK-style), verified at the point.
Floors: one jitted (2410 x 14370)(14370 x 2410) float32 matmul; one 2410 x 2410 Cholesky. Peers (PyTorch) only
when installed (bench session): else n/a."""


if __name__ == "__main__":
    main()
