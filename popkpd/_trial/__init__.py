"""Virtual trials: populations, trial simulation, NONMEM-style datasets, summaries (issue 5)."""

from .cli import add_simulate_parser as add_simulate_parser, cmd_simulate as cmd_simulate
from .design import (
    DVID_OUTPUTS as DVID_OUTPUTS,
    SimulatedTrial as SimulatedTrial,
    TrialDesign as TrialDesign,
    simulate_trial as simulate_trial,
    standard_sampling as standard_sampling,
)
from .population import (
    LogNormalCovariate as LogNormalCovariate,
    StageCovariate as StageCovariate,
    VirtualPopulation as VirtualPopulation,
    sample_population as sample_population,
)
from .summary import (
    PKTimepoint as PKTimepoint,
    Target as Target,
    compare as compare,
    summarise_trial as summarise_trial,
)
