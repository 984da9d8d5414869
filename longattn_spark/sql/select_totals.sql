-- LongAttn selection: windows and tokens kept per category by a cut (the random baseline
-- takes as many as the LDS cut with the same options).
--   :flagged  output of select_flagged.sql
SELECT
  category,
  count_if(selected)                                 AS selected,
  coalesce(sum(n_tokens) FILTER (WHERE selected), 0) AS tokens_selected
FROM IDENTIFIER(:flagged)
GROUP BY category
