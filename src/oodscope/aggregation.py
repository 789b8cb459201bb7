"""Multi-layer score aggregation: combine the per-layer scores of a feature detector into one score.

A feature detector given several layers (``KNN(layers=[...], aggregator=FisherAggregator())``) scores each
layer separately and hands the per-layer scores to an aggregator, fitted on the fit data's per-layer scores:

- :class:`StdNormalizedAggregator`: mean of the layer scores after dividing each by its fit-data std;
- :class:`MeanNormalizedAggregator`: mean after dividing each by its fit-data mean;
- :class:`FisherAggregator`: Fisher's method (with Brown's correction for correlated layers) on empirical
  p-values against the fit data.
"""

from .detectors._layerwise import (
    Aggregator,
    FisherAggregator,
    MeanNormalizedAggregator,
    StdNormalizedAggregator,
)

__all__ = ["Aggregator", "FisherAggregator", "MeanNormalizedAggregator", "StdNormalizedAggregator"]
