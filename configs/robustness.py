"""Robustness run defaults: which corruptions and severities, how many source images per cell, the seed.

Command:   python -m train.evaluate --corruptions all          (offline, no broker; flags override this)
           python -m streamer --corruptions all --rate 0     (streamed: 38,000 requests with the clean ones)
Runtime:   15 corruptions x 5 severities x 500 images = 37,500 corrupted images; generation and the
           predictions of two models take well under a minute on 2 cores offline; streamed, about two
           minutes, three with --compare (docs/robustness.md).
The severity table itself lives in train/corruptions.py (CORRUPTIONS), with its reasoning in
docs/robustness.md; `evaluate_robustness` takes its defaults from here.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.corruptions = "all"  # all | NAME,NAME
    config.severities = "1-5"  # 1-5 | 3 | 1,3,5
    # Source images per cell, the same seeded subset in every cell and in the clean run. 500 gives each
    # cell's accuracy a 95% Wilson interval of at most +-4.4 points (about +-2 points at 95% accuracy).
    config.per_cell = 500
    config.seed = 0  # picks the subset and seeds every corruption's random draws
    config.worst = 5  # worst cells listed
    # The intervals' level (95%) and bootstrap size (1,000) are results/robustness.py's LEVEL and RESAMPLES.
    return config
