// Reference problem (shared/bench/README.md): 2-compartment model, first-order absorption from an
// SC depot, 40 subjects, non-centred log-normal IIV on CL, Vc, ka, proportional residual error.
// Closed form: superposition over doses of the single-dose solution (tri-exponential).
functions {
  // concentration at time t after a unit dose into the depot (t > 0), rates in 1/time
  real unit_conc(real t, real ka, real k10, real k12, real k21, real vc) {
    real s = k10 + k12 + k21;
    real r = sqrt(s * s - 4 * k10 * k21);
    real alpha = (s + r) / 2;
    real beta = (s - r) / 2;
    return ka / vc * ((k21 - alpha) / ((ka - alpha) * (beta - alpha)) * exp(-alpha * t)
                      + (k21 - beta) / ((ka - beta) * (alpha - beta)) * exp(-beta * t)
                      + (k21 - ka) / ((alpha - ka) * (beta - ka)) * exp(-ka * t));
  }
}
data {
  int<lower=1> N;
  int<lower=1> n_obs;
  array[n_obs] int<lower=1, upper=N> obs_id;
  vector[n_obs] obs_time;
  vector<lower=0>[n_obs] dv;
  int<lower=1> n_dose;
  array[n_dose] int<lower=1, upper=N> dose_id;
  vector[n_dose] dose_time;
  vector[n_dose] dose_amt;
  array[N] int dose_first;  // doses of subject i: dose_first[i] .. dose_last[i]
  array[N] int dose_last;
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
  for (j in 1:n_obs) {
    int i = obs_id[j];
    real c = 0;
    for (k in dose_first[i]:dose_last[i]) {
      if (obs_time[j] > dose_time[k])
        c += dose_amt[k] * unit_conc(obs_time[j] - dose_time[k], ka_i[i], cl_i[i] / vc_i[i], q / vc_i[i],
                                     q / vp, vc_i[i]);
    }
    conc[j] = c;
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
