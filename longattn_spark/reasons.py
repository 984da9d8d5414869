"""Reasons of the scores_rejects table, shared by every scoring method.

Plain strings in a module without Spark, so the score math (``scorers/*/losses.py``, …) can
name them on a machine that only has torch.
"""

WRONG_LENGTH = "wrong_length"
IDS_OUT_OF_VOCAB = "ids_out_of_vocab"
#: the method's value for the window is NaN or infinite (``ScorerMethod.finite_columns``)
NON_FINITE_SCORE = "non_finite_score"
#: lossgain: a loss the window's score uses is NaN or infinite (never a NaN score).
NON_FINITE_LOSS = "non_finite_loss"
#: cohesion: the window's category had no windows when the run planned its vocabularies
#: (windows added to the table during the run); the next run scores it
CATEGORY_NOT_PLANNED = "category_not_planned"
