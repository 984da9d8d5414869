-- LongAttn selection, step 1: the scores of one scorer, joined to their windows for the
-- window's category and token count.
--   :scores     scores table (read at a pinned Delta version)
--   :windows    windows table (read at a pinned Delta version)
--   :scorer_id  the scorer whose scores are used
-- Every score of the scorer is kept. A row is usable for the selection when its window exists
-- and ds, variance and n_tokens are finite numbers; otherwise excluded_reason says why, and the
-- row is carried to the selection table with selected = false and no normalized scores.
-- The hint builds a hash table of the windows side per shuffle partition instead of sorting
-- both sides (about 1.5x faster here; both sides are shuffled by window_id either way).
SELECT /*+ SHUFFLE_HASH(w) */
  s.window_id,
  coalesce(w.category, s.category) AS category,
  w.n_tokens,
  s.ds,
  s.variance,
  CASE
    WHEN w.window_id IS NULL THEN 'no_window'
    WHEN w.n_tokens IS NULL THEN 'no_n_tokens'
    WHEN s.ds IS NULL OR s.variance IS NULL THEN 'null_score'
    WHEN isnan(s.ds) OR isnan(s.variance) THEN 'nan_score'
    WHEN abs(s.ds) = double('Infinity') OR abs(s.variance) = double('Infinity')
      THEN 'infinite_score'
  END AS excluded_reason
FROM IDENTIFIER(:scores) AS s
LEFT JOIN IDENTIFIER(:windows) AS w
  ON w.window_id = s.window_id
WHERE s.scorer_id = :scorer_id
