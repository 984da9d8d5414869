-- LongAttn selection, step 1: the scores of one scorer, joined to their windows for the
-- window's category and token count.
--   :scores     scores table (read at a pinned Delta version)
--   :windows    windows table (read at a pinned Delta version)
--   :scorer_id  the scorer whose scores are used
--   :heads      array<int> of query heads (select --heads): ds and variance are the means of
--               ds_heads and var_heads over these heads (0-based) instead of over all heads;
--               empty: the stored all-head ds and variance. A row whose arrays lack one of the
--               heads is excluded as 'missing_head' (the job checks the heads against the
--               scorer's head count before it runs, so this only catches inconsistent rows).
-- Every score of the scorer is kept. A row is usable for the selection when its window exists
-- and ds, variance and n_tokens are finite numbers; otherwise excluded_reason says why, and the
-- row is carried to the selection table with selected = false and no normalized scores.
-- The hint builds a hash table of the windows side per shuffle partition instead of sorting
-- both sides (about 1.5x faster here; both sides are shuffled by window_id either way).
-- Any scorer: for every method but LongAttn (ProLong, lossgain, ...) its score takes the
-- place of ds and variance is 0, so the later steps rank by z(score) alone (z_du = 0,
-- lds = z(score)), with the same cuts and budgets; select_rows.sql writes ds and variance of
-- those rows as NULL. LongAttn rows (method 'longattn', or NULL on rows written before the
-- column) are unchanged.
WITH joined AS (
  SELECT /*+ SHUFFLE_HASH(w) */
    s.window_id,
    coalesce(w.category, s.category) AS category,
    w.n_tokens,
    w.window_id IS NULL AS no_window,
    coalesce(s.method, 'longattn') AS method,
    CASE WHEN coalesce(s.method, 'longattn') <> 'longattn' THEN s.score
         WHEN size(:heads) = 0 THEN s.ds
         ELSE aggregate(:heads, 0D, (acc, h) -> acc + try_element_at(s.ds_heads, h + 1))
              / size(:heads)
    END AS ds,
    CASE WHEN coalesce(s.method, 'longattn') <> 'longattn' THEN 0D
         WHEN size(:heads) = 0 THEN s.variance
         ELSE aggregate(:heads, 0D, (acc, h) -> acc + try_element_at(s.var_heads, h + 1))
              / size(:heads)
    END AS variance,
    size(:heads) > 0
      AND (s.ds_heads IS NULL OR s.var_heads IS NULL
           OR exists(:heads, h -> h >= least(size(s.ds_heads), size(s.var_heads))))
      AS missing_head
  FROM IDENTIFIER(:scores) AS s
  LEFT JOIN IDENTIFIER(:windows) AS w
    ON w.window_id = s.window_id
  WHERE s.scorer_id = :scorer_id
)
SELECT
  window_id,
  category,
  n_tokens,
  ds,
  variance,
  method,
  CASE
    WHEN no_window THEN 'no_window'
    WHEN n_tokens IS NULL THEN 'no_n_tokens'
    WHEN missing_head THEN 'missing_head'
    WHEN ds IS NULL OR variance IS NULL THEN 'null_score'
    WHEN isnan(ds) OR isnan(variance) THEN 'nan_score'
    WHEN abs(ds) = double('Infinity') OR abs(variance) = double('Infinity')
      THEN 'infinite_score'
  END AS excluded_reason
FROM joined
