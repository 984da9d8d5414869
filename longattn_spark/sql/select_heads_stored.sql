-- select --heads: how many per-head scores the rows of one scorer store, for checking the
-- requested heads before the selection runs when the scorer's record (the scores table's
-- longattn.scorer.<id> property) does not say.
--   :scores     scores table (read at a pinned Delta version, with a method column)
--   :scorer_id  the scorer
-- min_heads / max_heads: the fewest and most heads over the rows that store both arrays (NULL
-- when none does); short_window: a window with the fewest; other_method: rows without
-- per-head scores.
SELECT
  count(*) AS n_rows,
  count_if(ds_heads IS NULL OR var_heads IS NULL) AS other_method,
  min(least(size(ds_heads), size(var_heads)))
    FILTER (WHERE ds_heads IS NOT NULL AND var_heads IS NOT NULL) AS min_heads,
  max(least(size(ds_heads), size(var_heads)))
    FILTER (WHERE ds_heads IS NOT NULL AND var_heads IS NOT NULL) AS max_heads,
  min_by(window_id, least(size(ds_heads), size(var_heads)))
    FILTER (WHERE ds_heads IS NOT NULL AND var_heads IS NOT NULL) AS short_window
FROM IDENTIFIER(:scores)
WHERE scorer_id = :scorer_id
