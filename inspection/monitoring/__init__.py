"""Watching the line: torch-free statistics for drift, the frame-quality gate and the p-chart.

* ``framestats`` — cheap statistics of one model input (brightness, contrast, sharpness,
  saturated fraction), computed on the uint8 frame the model is about to score;
* ``reference`` — the distribution of those statistics and of the model's scores on the
  validation split, stored in the card at export (``ModelCard.monitoring``);
* ``drift`` — PSI and the Kolmogorov–Smirnov test of a window against a reference;
* ``gate`` — is one frame far outside the reference (black, overexposed, out of focus)?
* ``spc`` — the p-chart of the reject rate with 3σ limits and the run rule.

Nothing here imports torch or serving; ``serving.monitoring`` runs these on the live line.
This ``__init__`` imports nothing, so ``inspection.card`` can import the reference schema.
"""
