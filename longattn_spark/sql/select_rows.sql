-- LongAttn selection, step 5: the rows of the selection table. For any other method's scorer
-- (ProLong, lossgain, ...) ds and variance are NULL, z_ds = lds = its score normalized within
-- the category, z_du = 0.
--   :flagged          output of select_flagged.sql
--   :selection_id     hash of the parameters, scorer and input table versions
--   :scorer_id, :params (JSON), :windows_version, :scores_version
SELECT
  :selection_id                    AS selection_id,
  window_id,
  category,
  n_tokens,
  CASE WHEN method = 'longattn' THEN ds END        AS ds,
  CASE WHEN method = 'longattn' THEN variance END AS variance,
  z_ds,
  z_du,
  lds,
  selected,
  excluded_reason,
  :scorer_id                       AS scorer_id,
  :params                          AS params,
  CAST(:windows_version AS BIGINT) AS windows_version,
  CAST(:scores_version AS BIGINT)  AS scores_version,
  current_timestamp()              AS selected_at
FROM IDENTIFIER(:flagged)
