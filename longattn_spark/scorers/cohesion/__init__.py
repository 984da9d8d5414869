"""``--method cohesion``: how much a window reads as one text, against its category's
vocabulary (``stats.py``: the math; ``vocabulary.py``: the categories' document frequencies
from the windows table; ``method.py``: the scorer)."""
