"""Aggregation-aware RL datasets: sample candidates once, wrap them into aggregation prompts, mix with plain ones.

The paper's data augmentation (and AggLM's balanced variant), as a resumable build:

1. Check everything that needs no model: the options, gold answers, and that every question fits the
   length budget (`prompt + max completion <= max model length`, counted with the training model's
   tokenizer and chat template).
2. Sample M candidates per problem from the reference policy (temperature 1.0 by default), in shards: one
   `engine.generate` call per shard of problems, one seed per request (`rsa.seeds.request_seed(seed, 1,
   problem_index, j)`, so the candidates are the step-1 population an `rsa eval` run with the same seed,
   engine and problem order would draw). Every candidate is scored by its task's scorer. Each shard is
   written atomically to `OUT/candidates/shard_NNNNN.jsonl`; `OUT/manifest.json` records the configuration.
   A killed build resumes by skipping finished shards and refuses a different configuration, naming the keys.
3. Build examples (`build_examples`): one plain prompt per problem and aggregation prompts over candidate
   sets of K (fixed or a range) drawn without replacement within a set, several distinct sets per problem.
   Each set is classified like AggLM: *easy* (its majority answer is right), *hard* (majority wrong, at
   least one candidate right) or *all_wrong*; sets are selected to meet target class fractions, and plain
   prompts are subsampled so aggregation prompts make up the requested fraction. Candidates that overflow
   the budget are shortened around a visible marker (`rsa.fitting.PromptFitter`, shared with RSA evaluation)
   or the set is dropped (`overflow="drop"`); no prompt over budget is ever written.
4. Write `OUT/train.parquet` (every column of `rsa.rows.COLUMNS`, docs/FORMATS.md) and `OUT/build_report.json` (achieved fractions, shortfalls, length histogram).

`import_verl` converts an already-built public aggregation dataset in verl's parquet layout to the same columns.

The package follows the build's stages: `config` (settings and checks), `budget` (token lengths),
`candidates` (sampling and the shard store), `sets` (candidate sets and balance), `build` (training rows),
`output` (parquet), `pipeline` (the whole build) and `verl` (import). Every public name is re-exported here.
"""

from __future__ import annotations

from rsa.augment.budget import (
    LengthBudget,
    default_max_model_len,
    format_histogram,
)
from rsa.augment.build import (
    BuildReport,
    build_examples,
)
from rsa.augment.candidates import (
    Candidate,
    CandidateStore,
    score_candidate,
)
from rsa.augment.config import (
    CANDIDATES_DIR,
    CLASSES,
    DATASET_FILE,
    MANIFEST,
    MANIFEST_FORMAT,
    OPERATIONAL_ENGINE_OPTIONS,
    OVERFLOW_MODES,
    POOL_FACTOR,
    REPORT_FILE,
    SHORTFALL_MODES,
    Balance,
    CandidateConfig,
    MixConfig,
    check_gold_answers,
    check_k_fits,
)
from rsa.augment.output import (
    dataset_schema,
    write_dataset,
)
from rsa.augment.pipeline import (
    build_augmented_dataset,
)
from rsa.augment.sets import (
    CandidateSet,
    apportion,
    cluster_labels,
    majority_is_correct,
    select_sets,
    set_class,
)
from rsa.augment.verl import (
    ImportReport,
    convert_verl_row,
    detect_aggregation,
    import_verl,
)
from rsa.tasks import CORRECT_SCORE  # re-exported: a candidate is right when its score reaches it

__all__ = [
    "Balance",
    "BuildReport",
    "CANDIDATES_DIR",
    "CLASSES",
    "CORRECT_SCORE",
    "Candidate",
    "CandidateConfig",
    "CandidateSet",
    "CandidateStore",
    "DATASET_FILE",
    "ImportReport",
    "LengthBudget",
    "MANIFEST",
    "MANIFEST_FORMAT",
    "MixConfig",
    "OPERATIONAL_ENGINE_OPTIONS",
    "OVERFLOW_MODES",
    "POOL_FACTOR",
    "REPORT_FILE",
    "SHORTFALL_MODES",
    "apportion",
    "build_augmented_dataset",
    "build_examples",
    "check_gold_answers",
    "check_k_fits",
    "cluster_labels",
    "convert_verl_row",
    "dataset_schema",
    "default_max_model_len",
    "detect_aggregation",
    "format_histogram",
    "import_verl",
    "majority_is_correct",
    "score_candidate",
    "select_sets",
    "set_class",
    "write_dataset",
]
