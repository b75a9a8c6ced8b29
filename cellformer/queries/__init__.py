"""Queries of a trained checkpoint: predictions, exhaustive pair/triple screens, attention reports.

``cellformer.queries.screen`` is the screen module (its main function is ``screen.screen``).
"""

from cellformer.queries.predictor import PredictionTable, Predictor
from cellformer.queries.screen import ScreenResult, TopK, screen_pairs, screen_triples

__all__ = ["PredictionTable", "Predictor", "ScreenResult", "TopK", "screen_pairs", "screen_triples"]
