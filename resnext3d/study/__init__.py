"""``resnext3d study``: the ResNeXt paper's controlled comparison of cardinality, in 3D.

A study config (YAML, e.g. ``experiments/studies/cpu_phantom.yaml``; :class:`StudyConfig`) names
base experiments and the variants to compare:

- an equal-complexity series: cardinalities C whose group width d is derived, for 3×3×3 kernels,
  so that a block costs as many parameters as the reference (C, d) block
  (:func:`~resnext3d.models.complexity.equal_complexity_width`), all at one depth;
- a set of variants at about twice the complexity, each a cardinality with either more layers
  (deeper, the reference block) or a block twice the reference's (wider, more groups).

The study is a sweep over the one entry point: every variant × seed (× fold) is an ordinary
``resnext3d fit`` of the base experiments, the study's overrides and the variant's network
arguments, into ``<study dir>/runs/<variant>-seed<k>/`` (``--run_dir``), with its tags (C, d,
depth, seed) in ``tags.json``, in every logger's hyperparameters and as wandb tags. Parameters,
GMACs and depth are counted on the network the CLI builds from those same configs. A run whose fit
completed is skipped; one that was killed after a checkpoint continues with ``fit --resume``; one
killed before is started again. The study then writes ``results.csv``, ``results.md`` and
``results.png`` into its directory; ``results.md`` also compares every variant with the reference
block (C of the reference) run by run: the mean paired difference over the replicates (seeds ×
folds) both finished, its 95% t-interval, and how many replicates would narrow that interval to
±``TARGET_HALF_WIDTH``.

A run whose fit fails is reported (its log named, "failed" in the results) and the study goes on
with the next; it exits 1 at the end. SIGTERM or SIGINT stops the running fit (forwarded to it, so
that it saves its state) and the study, which exits 128 + the signal's number without results.
"""

from resnext3d.study.command import study_main, study_parser
from resnext3d.study.config import (
    Block,
    DoubleComplexity,
    NetworkArguments,
    Run,
    Study,
    StudyConfig,
    StudyError,
    Variant,
    parse_study,
)
from resnext3d.study.paired import PairedDifference, paired_over_cases, paired_over_replicates
from resnext3d.study.results import TARGET_HALF_WIDTH, collect, write_results
from resnext3d.study.runs import StudyRun, fit_arguments

__all__ = [
    "TARGET_HALF_WIDTH",
    "Block",
    "DoubleComplexity",
    "NetworkArguments",
    "PairedDifference",
    "Run",
    "Study",
    "StudyConfig",
    "StudyError",
    "StudyRun",
    "Variant",
    "collect",
    "fit_arguments",
    "paired_over_cases",
    "paired_over_replicates",
    "parse_study",
    "study_main",
    "study_parser",
    "write_results",
]
