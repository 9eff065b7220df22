"""METEOR and SPICE: optional caption metrics that run pycocoevalcap's Java jars.

Both need `java` on PATH and the `pycocoevalcap` package; SPICE also needs the Stanford CoreNLP
3.6.0 jars in pycocoevalcap's `spice/lib` (pycocoevalcap downloads them on first use; vlmforge
never downloads anything, so without them SPICE is skipped). Both are English-only. A metric that
cannot run is returned in `skipped` with the reason, never silently left out.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import subprocess
from pathlib import Path

logger = logging.getLogger(__name__)

JAVA_METRICS = ("METEOR", "SPICE")


def java_caption_metrics(
    hypotheses: list[str], references: list[list[str]], lang: str
) -> tuple[dict[str, float], dict[str, str]]:
    """METEOR and SPICE on tokenised, space-joined captions: (scores, {metric: why skipped})."""
    reason = _why_unavailable(lang)
    if reason:
        return {}, {name: reason for name in JAVA_METRICS}
    scores, skipped = {}, {}
    for name, make_scorer in (("METEOR", _meteor), ("SPICE", _spice)):
        scorer = make_scorer()
        if isinstance(scorer, str):
            skipped[name] = scorer
            continue
        try:
            scores[name] = _run_scorer(name, scorer, hypotheses, references)
        except (OSError, ValueError, subprocess.SubprocessError) as error:
            logger.warning("%s failed: %s", name, error)
            skipped[name] = f"{name} failed: {error}"
    return scores, skipped


def _why_unavailable(lang: str) -> str | None:
    if lang != "en":
        return "English only"
    if shutil.which("java") is None:
        return "Java not found on PATH"
    if _pycocoevalcap_dir() is None:
        return "needs pycocoevalcap (pip install pycocoevalcap)"
    return None


def _pycocoevalcap_dir() -> Path | None:
    """Where pycocoevalcap is installed (a namespace package: no `__file__`), or None."""
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _meteor():
    from pycocoevalcap.meteor.meteor import Meteor

    return Meteor()


def _spice():
    corenlp = _pycocoevalcap_dir() / "spice" / "lib" / "stanford-corenlp-3.6.0.jar"
    if not corenlp.exists():
        return f"needs Stanford CoreNLP 3.6.0 jars in {corenlp.parent}"
    from pycocoevalcap.spice.spice import Spice

    return Spice()


def _run_scorer(name: str, scorer, hypotheses: list[str], references: list[list[str]]) -> float:
    logger.info("computing %s (Java) on %d captions", name, len(hypotheses))
    gts = {index: refs for index, refs in enumerate(references)}
    res = {index: [hypothesis] for index, hypothesis in enumerate(hypotheses)}
    score, _ = scorer.compute_score(gts, res)
    return float(score)
