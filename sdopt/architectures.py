"""Real-size architectures with random weights: kept at this path for scripts that import it
(``sdopt.architectures.real_pipeline``); the code lives in `sdopt.simulation.architectures`."""

from sdopt.simulation.architectures import (
    REAL_ARCHES,
    TINY_ARCHES,
    TRAINED_ARCHES,
    load_pipeline,
    real_pipeline,
    stand_in,
)

__all__ = ["REAL_ARCHES", "TINY_ARCHES", "TRAINED_ARCHES", "load_pipeline", "real_pipeline", "stand_in"]
