"""Pharmacometric diagnostics of a fit: predictions and residuals (PRED, IPRED, IWRES, NPDE),
VPC/pcVPC, eta shrinkage, plots and a report."""

from .plots import (
    plot_eta_covariates as plot_eta_covariates,
    plot_gof as plot_gof,
    plot_individual_fits as plot_individual_fits,
    plot_npde as plot_npde,
    plot_trace as plot_trace,
    plot_vpc as plot_vpc,
)
from .information import expected_shrinkage as expected_shrinkage
from .predictions import predictions as predictions
from .report import parameter_table as parameter_table, write_report as write_report
from .shrinkage import shrinkage as shrinkage
from .vpc import coverage as vpc_coverage, vpc as vpc
