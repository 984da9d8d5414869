-- LongAttn selection, step 3: normalized scores, the LDS and the ordering key of the cut.
--   :scored     output of select_scored.sql
--   :stats      category_stats.sql without its total row (a few rows, broadcast to every window)
--   :normalize  'zscore': z(x) = (x - mean) / stddev_samp within the category (paper eq. 8);
--               'minmax': (x - min) / (max - min) within the category (authors' released code)
--   :alpha      weight of distribution uniformity DU = -variance
--   :method     'lds': windows are ranked by LDS; 'random': by a seeded hash of window_id
--   :seed       seed of the random ranking
--
-- zscore: z_ds = z(ds), z_du = z(DU) = (mean_var - variance) / sd_var, lds = z_ds + alpha*z_du.
-- minmax: z_ds = minmax(ds), z_du = minmax(variance),        lds = z_ds - alpha*z_du.
-- Any other method's rows (ProLong, lossgain, ...) carry its score as ds and variance 0
-- (select_scored.sql): z_du = 0 and lds = z_ds = the score normalized within the category.
-- A category with one usable window (stddev_samp is NULL) or zero spread (stddev or range 0)
-- gets z = 0 for that score: it carries no information to rank by.
-- sort_key: larger ranks first; tiebreak orders windows with equal sort_key (larger first),
-- then window_id (smaller first). Unusable rows have NULL normalized scores and sort_key.
WITH normalized AS (
  SELECT /*+ BROADCAST(st) */
    sc.window_id,
    sc.category,
    sc.n_tokens,
    sc.ds,
    sc.variance,
    sc.method,
    sc.excluded_reason,
    CASE
      WHEN sc.excluded_reason IS NOT NULL THEN NULL
      WHEN :normalize = 'minmax' THEN
        CASE WHEN st.max_ds > st.min_ds
             THEN (sc.ds - st.min_ds) / (st.max_ds - st.min_ds) ELSE 0D END
      WHEN st.sd_ds > 0 THEN (sc.ds - st.mean_ds) / st.sd_ds
      ELSE 0D
    END AS z_ds,
    CASE
      WHEN sc.excluded_reason IS NOT NULL THEN NULL
      WHEN :normalize = 'minmax' THEN
        CASE WHEN st.max_var > st.min_var
             THEN (sc.variance - st.min_var) / (st.max_var - st.min_var) ELSE 0D END
      WHEN st.sd_var > 0 THEN (st.mean_var - sc.variance) / st.sd_var
      ELSE 0D
    END AS z_du
  FROM IDENTIFIER(:scored) AS sc
  JOIN IDENTIFIER(:stats) AS st
    ON st.category <=> sc.category
),
scored AS (
  SELECT
    *,
    CASE WHEN :normalize = 'minmax' THEN z_ds - :alpha * z_du
         ELSE z_ds + :alpha * z_du END AS lds
  FROM normalized
)
SELECT
  *,
  CASE
    WHEN lds IS NULL THEN NULL
    WHEN :method = 'random' THEN CAST(xxhash64(window_id, CAST(:seed AS BIGINT)) AS DOUBLE)
    ELSE lds
  END AS sort_key,
  CAST(xxhash64(window_id) AS DOUBLE) AS tiebreak
FROM scored
