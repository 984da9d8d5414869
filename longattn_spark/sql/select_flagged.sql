-- LongAttn selection, step 4: apply each category's cut.
--   :ranked   the ranked rows (longattn_spark/select/ranked.py)
--   :cuts     one row per category (broadcast): mode 'all' keeps every usable window,
--             'above' keeps sort_key > threshold and 'from' sort_key >= threshold (approximate
--             cut; a tie split at its threshold is a 'before' cut), 'before' keeps the windows
--             ranked strictly before the first window left out (key, tiebreak, window_id) of
--             the exact cut, 'none' keeps nothing; a category without a row keeps nothing.
--   :min_lds  floor on lds (-Infinity when unused)
SELECT /*+ BROADCAST(c) */
  r.*,
  coalesce(
    r.sort_key IS NOT NULL
    AND r.lds >= :min_lds
    AND (c.mode = 'all'
         OR (c.mode = 'above' AND r.sort_key > c.threshold)
         OR (c.mode = 'from' AND r.sort_key >= c.threshold)
         OR (c.mode = 'before'
             AND (r.sort_key > c.key
                  OR (r.sort_key = c.key
                      AND (r.tiebreak > c.tiebreak
                           OR (r.tiebreak = c.tiebreak AND r.window_id < c.window_id)))))),
    false) AS selected
FROM IDENTIFIER(:ranked) AS r
LEFT JOIN IDENTIFIER(:cuts) AS c
  ON c.category <=> r.category
