"""The zip ``ship.package_zip`` makes for a Spark Connect server's Python workers: imported
from the zip alone (as the server's workers import it), it knows every built-in method and
shipped recipe. Finding them by filesystem paths once left ``--method longattn`` unknown
there (the package's files are zip members, not files)."""

from __future__ import annotations

import json
import subprocess
import sys

from longattn_spark.recipes.recipe import shipped_recipe_names
from longattn_spark.scorers import BUILTIN
from longattn_spark.ship import package_zip

PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import longattn_spark.scorers as scorers
from longattn_spark.recipes.recipe import load_recipe, shipped_recipe_names
from longattn_spark.scorers import get_method
assert scorers.__file__.startswith(sys.argv[1]), scorers.__file__
print(json.dumps({"methods": list(scorers.BUILTIN), "recipes": shipped_recipe_names(),
                  "repetition": get_method("repetition").name,
                  "recommended": load_recipe("recommended").rank}))
"""


def test_the_shipped_zip_knows_every_method_and_recipe(tmp_path):
    archive = package_zip(tmp_path / "ship")
    done = subprocess.run([sys.executable, "-c", PROBE, str(archive)], capture_output=True,
                          text=True, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout)
    assert found["methods"] == list(BUILTIN) and {"longattn", "lossgain", "prolong",
                                                  "repetition"} <= set(found["methods"])
    assert found["recipes"] == shipped_recipe_names() and "recommended" in found["recipes"]
    assert found["repetition"] == "repetition"
    assert "lossgain.score" in found["recommended"]
