-- Report: the scores of one scorer as category_stats.sql and the report's histograms read
-- them. A row is usable when ds and variance are finite numbers; otherwise excluded_reason
-- says why (the report's "not finite" column). Unlike select's ranked rows, no join to the
-- windows: the report describes the scores table as it is.
--   :scores     scores table (read at a pinned Delta version)
--   :scorer_id  the scorer
SELECT
  window_id,
  category,
  ds,
  variance,
  CAST(NULL AS INT) AS n_tokens,
  CASE
    WHEN ds IS NULL OR variance IS NULL THEN 'null_score'
    WHEN isnan(ds) OR isnan(variance) THEN 'nan_score'
    WHEN abs(ds) = double('Infinity') OR abs(variance) = double('Infinity')
      THEN 'infinite_score'
  END AS excluded_reason
FROM IDENTIFIER(:scores)
WHERE scorer_id = :scorer_id
