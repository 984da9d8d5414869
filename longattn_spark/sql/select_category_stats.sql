-- LongAttn selection, step 2: per-category aggregates of the usable windows (paper §4.2:
-- the selection is made within each category). One grouped aggregate: a few numbers per
-- category, later broadcast to every window.
--   :scored   output of select_scored.sql
SELECT
  category,
  count(*)                                                  AS windows,
  count_if(excluded_reason IS NOT NULL)                     AS excluded,
  count_if(excluded_reason IS NULL)                         AS n,
  coalesce(sum(n_tokens) FILTER (WHERE excluded_reason IS NULL), 0) AS tokens,
  max(n_tokens) FILTER (WHERE excluded_reason IS NULL)      AS max_window_tokens,
  avg(ds) FILTER (WHERE excluded_reason IS NULL)            AS mean_ds,
  stddev_samp(ds) FILTER (WHERE excluded_reason IS NULL)    AS sd_ds,
  min(ds) FILTER (WHERE excluded_reason IS NULL)            AS min_ds,
  max(ds) FILTER (WHERE excluded_reason IS NULL)            AS max_ds,
  avg(variance) FILTER (WHERE excluded_reason IS NULL)      AS mean_var,
  stddev_samp(variance) FILTER (WHERE excluded_reason IS NULL) AS sd_var,
  min(variance) FILTER (WHERE excluded_reason IS NULL)      AS min_var,
  max(variance) FILTER (WHERE excluded_reason IS NULL)      AS max_var
FROM IDENTIFIER(:scored)
GROUP BY category
