// Reference problem (shared/bench/README.md), solved with Stan's ODE solver (ode_rk45_tol):
// same model, priors and data as pk_2cpt_closed.stan. Each subject is integrated dose interval by
// dose interval (the dose enters the depot as a jump at the start of its interval).
functions {
  vector rhs(real t, vector y, real cl, real vc, real q, real vp, real ka) {
    vector[3] dy;
    dy[1] = -ka * y[1];
    dy[2] = ka * y[1] - (cl + q) / vc * y[2] + q / vp * y[3];
    dy[3] = q / vc * y[2] - q / vp * y[3];
    return dy;
  }
}
data {
  int<lower=1> N;
  int<lower=1> n_obs;
  vector<lower=0>[n_obs] dv;
  // dose intervals ("segments"), subject by subject
  int<lower=1> n_seg;
  array[n_seg] int<lower=1, upper=N> seg_id;
  array[n_seg] int<lower=0, upper=1> seg_new;  // first interval of its subject: start from zero
  array[n_seg] real seg_t0;
  array[n_seg] real seg_amt;                   // dose into the depot at seg_t0
  array[n_seg] int seg_first;                  // output times seg_first .. seg_first + seg_len - 1
  array[n_seg] int seg_len;
  int<lower=1> n_ts;
  array[n_ts] real ts;                         // output times: observations, then the interval end
  array[n_ts] int ts_obs;                      // index of the observation (0: the interval end)
  real rtol;
  real atol;
  int max_num_steps;
}
parameters {
  real<lower=0> cl;
  real<lower=0> vc;
  real<lower=0> q;
  real<lower=0> vp;
  real<lower=0> ka;
  real<lower=0> omega_cl;
  real<lower=0> omega_vc;
  real<lower=0> omega_ka;
  real<lower=0> sigma;
  vector[N] eta_cl;
  vector[N] eta_vc;
  vector[N] eta_ka;
}
model {
  vector[N] cl_i = cl * exp(omega_cl * eta_cl);
  vector[N] vc_i = vc * exp(omega_vc * eta_vc);
  vector[N] ka_i = ka * exp(omega_ka * eta_ka);
  vector[n_obs] conc;
  vector[3] y = rep_vector(0, 3);
  for (s in 1:n_seg) {
    int i = seg_id[s];
    if (seg_new[s] == 1) y = rep_vector(0, 3);
    y[1] += seg_amt[s];
    array[seg_len[s]] vector[3] sol = ode_rk45_tol(rhs, y, seg_t0[s], ts[seg_first[s]:(seg_first[s] + seg_len[s] - 1)],
                                                 rtol, atol, max_num_steps, cl_i[i], vc_i[i], q, vp, ka_i[i]);
    for (k in 1:seg_len[s]) {
      int o = ts_obs[seg_first[s] + k - 1];
      if (o > 0) conc[o] = sol[k][2] / vc_i[i];
    }
    y = sol[seg_len[s]];
  }
  cl ~ lognormal(log(1.0), 1.0);
  vc ~ lognormal(log(5.0), 1.0);
  q ~ lognormal(log(1.0), 1.0);
  vp ~ lognormal(log(5.0), 1.0);
  ka ~ lognormal(log(0.5), 1.0);
  omega_cl ~ normal(0, 0.5);
  omega_vc ~ normal(0, 0.5);
  omega_ka ~ normal(0, 0.5);
  sigma ~ normal(0, 0.5);
  eta_cl ~ std_normal();
  eta_vc ~ std_normal();
  eta_ka ~ std_normal();
  dv ~ normal(conc, sigma * conc);
}
