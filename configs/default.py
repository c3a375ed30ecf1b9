"""Every field a job reads, each defined once with what it means (the flax examples' default.py).

`get_config()` holds the fields every training job shares: numerics, the mesh, the optimiser, the
schedule, the batch and the cadence. `finetune()`, `distill()` and `fit_teacher_head()` add the
fields of those jobs; the files beside this one (glue.py, squad.py, distill.py, miniature.py, ...)
start from one of them and change only what their recipe changes. The trainers read these fields
and define none; `validate` (distilbert_jax/train/checks.py) checks a config once, before a job
loads or writes anything.
"""

from ml_collections import config_dict

from distilbert_jax import sharding


def get_config() -> config_dict.ConfigDict:
    """The fields every training job shares."""
    c = config_dict.ConfigDict()
    c.job = "finetune"  # what runs: finetune, evaluate, distill, fit_teacher_head, miniature
    c.teacher = ""  # distill: the BERT to distil from; finetune: a task-fine-tuned teacher (or "")
    c.seed = 42  # parameters of new heads, data order and dropout all derive from it

    # numerics
    c.dtype = "float32"  # compute dtype; "bfloat16" on TPU (params stay float32)
    c.matmul_precision = "auto"  # float32 matmuls in float32 everywhere; "high" allows TF32 on GPUs
    c.deterministic = True  # GPU reductions in a fixed order: exact resume there too (main applies it)
    c.remat = "none"  # "dots"/"full": recompute block activations in the backward (GPU/TPU memory)
    # True: the command line caches compiled programs in <workdir>/xla_cache across runs
    # (from Python: dj.configure(compilation_cache_dir=...))
    c.compilation_cache = False

    # mesh
    c.mesh = "dp"  # a sharding.PRESETS name, or "data:2,fsdp:-1,tensor:2" (-1: the remaining devices)
    c.rules = sharding.RULES  # logical axis name -> mesh axes (sharding.RULES says each)

    # batch
    c.max_length = 128  # tokens per sequence, [CLS] and [SEP] included
    # True: a batch's sequences share rows of max_length (data/packing.py), so padding is not
    # computed; the same examples, order, losses and metrics as unpacked
    c.packing = False
    c.batch_size = 32  # sequences per optimiser update
    c.grad_accum_steps = 1  # micro-batches per update (batch_size must be a multiple)

    # optimiser: AdamW with clipping, no decay on biases and LayerNorm (train/state.py)
    c.lr = 2e-5  # peak learning rate
    c.weight_decay = 0.0
    c.adam_b1 = 0.9
    c.adam_b2 = 0.999
    c.adam_eps = 1e-8
    c.max_grad_norm = 1.0  # clip the global gradient norm; 0 turns clipping off

    # schedule: linear warmup to lr, then linear decay to 0 at the last step
    c.num_epochs = 3.0
    c.max_steps = 0  # > 0 overrides num_epochs
    c.warmup_ratio = 0.0  # of the total steps
    c.warmup_steps = 0  # > 0 overrides warmup_ratio

    # cadence
    c.log_every = 50  # steps between metric lines
    c.checkpoint_every = 500  # steps between checkpoints (and one at the end)
    c.keep_checkpoints = 2  # the latest N are kept
    c.save_model = True  # save_pretrained at the end, loadable by transformers
    c.allow_config_change = False  # True: continue a workdir's run under a config that differs
    return c


def finetune() -> config_dict.ConfigDict:
    """Fine-tuning and evaluation on a Task (GLUE, SQuAD, CoNLL, SWAG, your own files)."""
    c = get_config()
    c.job = "finetune"  # or "evaluate" (a fine-tuned checkpoint on eval_splits)
    c.model = "distilbert-base-uncased"  # HF checkpoint dir, hub id, or packaged:all-MiniLM-L6-v2
    c.model_overrides = config_dict.ConfigDict()  # model config fields to change, e.g. dropout

    # data
    c.task = "sst2"  # a data.get_task name
    c.data_dir = ""  # folder with the task's files (GLUE TSVs, SQuAD JSON, CoNLL files)
    c.data_source = "local"  # or "tfds"
    c.task_options = config_dict.ConfigDict()  # the task's own options (doc_stride, columns, ...)
    c.buckets = (32, 64, 128, 256, 384, 512)  # padded lengths: one compiled shape per bucket
    c.limit_train_examples = 0  # > 0 keeps the first N training examples (quick runs)
    c.limit_eval_examples = 0

    # evaluation and what is kept
    c.eval_batch_size = 64
    c.eval_every = 0  # steps; 0 = once per epoch
    c.eval_splits = ("dev",)
    c.predict_splits = ()  # e.g. ("test",): GLUE-server / SQuAD prediction files
    c.export = "best"  # what model/ holds: "best" (the best evaluation's params) or "last"
    c.early_stopping_patience = 0  # > 0: stop after this many evaluations without a better one

    # the second distillation step, with a `teacher` fine-tuned on this task
    c.task_alpha = 0.5  # weight of the task loss
    c.distill_alpha = 0.5  # weight of the soft-target loss
    c.distill_temperature = 2.0
    return c


def distill() -> config_dict.ConfigDict:
    """The released DistilBERT's recipe (the triple loss, Sanh et al. 2019), on a teacher and
    corpus of your choice."""
    c = get_config()
    c.job = "distill"
    c.teacher = "bert-base-uncased"  # HF checkpoint dir, hub id, or packaged:all-MiniLM-L6-v2
    c.teacher_dtype = "float32"  # "bfloat16" halves the teacher's cost
    c.seed = 56

    # corpus
    c.corpus_files = ()  # plain-text files (one sequence per line) or "tfds:<name>[:<split>]"
    c.corpus_dir = ""  # the prepared corpus (default <workdir>/corpus, prepared on first run)
    c.max_length = 512
    c.length_multiple = 32  # batches are padded to a multiple of this (few compiled shapes)

    # student
    c.student_layers = 6
    c.student_init = "teacher"  # every other teacher layer, or "random" (the paper's ablation)
    c.freeze_positions = True  # the reference trained with BERT's positions frozen

    # the loss: alpha_ce·T²·KL + alpha_mlm·MLM + alpha_cos·(1 - cos) [+ alpha_mse·MSE of logits]
    c.temperature = 2.0
    c.alpha_ce = 5.0
    c.alpha_mlm = 2.0
    c.alpha_cos = 1.0
    c.alpha_mse = 0.0
    c.restrict_ce_to_mask = False  # True: the soft-target loss at the masked positions only
    # soft targets at every token of a micro-batch longer than this: the vocabulary logits made this
    # many tokens at a time (and again in the backward), never [tokens, vocabulary] at once; 0: at once
    c.logit_chunk = 8192

    # masking: mlm_mask_prop of the tokens are targets; of those word_mask become [MASK],
    # word_keep stay, word_rand become a random token; sampling smoothed by counts^-mlm_smoothing
    c.mlm_mask_prop = 0.15
    c.word_mask = 0.8
    c.word_keep = 0.1
    c.word_rand = 0.1
    c.mlm_smoothing = 0.7

    # the paper's batch and optimiser: "up to 4K examples per batch", AdamW 5e-4 (0.9, 0.98)
    c.batch_size = 4000
    c.grad_accum_steps = 50
    c.lr = 5e-4
    c.adam_b2 = 0.98
    c.adam_eps = 1e-6
    c.warmup_ratio = 0.05
    c.max_grad_norm = 5.0
    return c


def fit_teacher_head() -> config_dict.ConfigDict:
    """A masked-LM head on a bare teacher's frozen encoder (all-MiniLM-L6-v2 ships without one):
    300 steps of 64 sequences of 128 tokens at lr 5e-3."""
    c = distill()
    c.update(job="fit_teacher_head", max_length=128, batch_size=64, grad_accum_steps=1,
             max_steps=300, lr=5e-3, log_every=25, checkpoint_every=100)
    return c
