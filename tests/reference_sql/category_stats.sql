-- Per-category statistics of scored windows, shared by select (step 2: the z-scores and the
-- bounds of the cut, paper §4.2: the selection is made within each category) and the report
-- (its table of DS and variance). One grouped aggregate: a few numbers per category, plus an
-- overall row (is_total, category NULL) that select leaves out.
--   :scored   rows with category, ds, variance, n_tokens and excluded_reason (NULL: usable):
--             select_scored.sql, or report_scores.sql
SELECT
  category,
  grouping(category) = 1                                    AS is_total,
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
  max(variance) FILTER (WHERE excluded_reason IS NULL)      AS max_var,
  min(log10(variance)) FILTER (WHERE excluded_reason IS NULL AND variance > 0) AS min_log10_var,
  max(log10(variance)) FILTER (WHERE excluded_reason IS NULL AND variance > 0) AS max_log10_var
FROM IDENTIFIER(:scored)
GROUP BY GROUPING SETS ((category), ())
ORDER BY is_total, category
