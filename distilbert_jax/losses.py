"""Task losses with Hugging Face semantics, as pure functions in float32.

Each returns the scalar transformers' heads compute when given `labels`. The `*_sums` helpers return
(sum, count) so callers can accumulate exact means over padded or sharded batches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

IGNORE_INDEX = -100


def resolve_problem_type(problem_type: str | None, num_labels: int, labels: jax.Array) -> str:
    """HF's rule when problem_type is unset: 1 label -> regression, integer labels -> single-label."""
    if problem_type is not None:
        return problem_type
    if num_labels == 1:
        return "regression"
    if jnp.issubdtype(labels.dtype, jnp.integer):
        return "single_label_classification"
    return "multi_label_classification"


def cross_entropy_sums(logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_INDEX):
    """(sum of token cross-entropies over non-ignored labels, number of non-ignored labels)."""
    logits = logits.astype(jnp.float32)
    keep = labels != ignore_index
    safe = jnp.where(keep, labels, 0)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    return jnp.sum(jnp.where(keep, losses, 0.0)), jnp.sum(keep)


def cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_INDEX):
    """torch.nn.CrossEntropyLoss(ignore_index) with mean reduction (NaN when nothing is kept, as torch)."""
    total, count = cross_entropy_sums(logits, labels, ignore_index)
    return total / count


def sequence_classification_loss(logits: jax.Array, labels: jax.Array, num_labels: int,
                                 problem_type: str | None = None):
    """MSE (regression), cross-entropy (single label) or BCE-with-logits (multi label)."""
    kind = resolve_problem_type(problem_type, num_labels, labels)
    logits = logits.astype(jnp.float32)
    if kind == "regression":
        if num_labels == 1:
            return jnp.mean((logits.squeeze(-1) - labels.reshape(-1).astype(jnp.float32)) ** 2)
        return jnp.mean((logits - labels.astype(jnp.float32)) ** 2)
    if kind == "single_label_classification":
        return cross_entropy(logits.reshape(-1, num_labels), labels.reshape(-1))
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32)))


def token_classification_loss(logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_INDEX):
    return cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index)


def masked_lm_loss(logits: jax.Array, labels: jax.Array):
    """Cross-entropy on positions whose label is not -100."""
    return token_classification_loss(logits, labels)


def multiple_choice_loss(logits: jax.Array, labels: jax.Array):
    """logits [batch, choices], labels [batch] (the right choice)."""
    return cross_entropy(logits, labels)


def question_answering_loss(start_logits: jax.Array, end_logits: jax.Array,
                            start_positions: jax.Array, end_positions: jax.Array):
    """Mean of start and end cross-entropies; positions outside the sequence are ignored (HF clamps
    them to `length`, which is then its ignore_index)."""
    length = start_logits.shape[-1]
    start = jnp.clip(start_positions.reshape(-1), 0, length)
    end = jnp.clip(end_positions.reshape(-1), 0, length)
    return (cross_entropy(start_logits, start, ignore_index=length)
            + cross_entropy(end_logits, end, ignore_index=length)) / 2


def head_loss(head: str, outputs, labels: dict, config):
    """The loss transformers' model of this head computes from `labels` (HF argument names)."""
    if head == "sequence_classification":
        return sequence_classification_loss(outputs.logits, labels["labels"], config.num_labels,
                                            config.problem_type)
    if head == "token_classification":
        return token_classification_loss(outputs.logits, labels["labels"])
    if head == "multiple_choice":
        return multiple_choice_loss(outputs.logits, labels["labels"])
    if head == "question_answering":
        return question_answering_loss(outputs.start_logits, outputs.end_logits,
                                       labels["start_positions"], labels["end_positions"])
    if head == "masked_lm":
        return masked_lm_loss(outputs.logits, labels["labels"])
    raise ValueError(f"head {head!r} has no task loss.")


# --- distillation (DistilBERT's triple loss) -----------------------------------------------------------
# Each term is a mean over the tokens that `mask` selects, computed as (sum, count) with static shapes:
# the JAX form of the reference code's masked_select. Logits and hidden states are cast to float32.

def soft_target_kl_sums(student_logits, teacher_logits, mask, temperature: float):
    """T² · KL(softmax(t/T) ‖ softmax(s/T)) summed over selected tokens, and their count
    (nn.KLDivLoss(reduction='batchmean') over the selected rows, times T²)."""
    s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    per_token = jnp.sum(jnp.exp(t) * (t - s), axis=-1) * temperature ** 2
    mask = mask.astype(bool)
    return jnp.sum(jnp.where(mask, per_token, 0.0)), jnp.sum(mask)


def cosine_sums(student_hidden, teacher_hidden, mask, eps: float = 1e-8):
    """Σ (1 − cos(h_s, h_t)) over selected tokens, and their count (nn.CosineEmbeddingLoss, target 1)."""
    s, t = student_hidden.astype(jnp.float32), teacher_hidden.astype(jnp.float32)
    cos = jnp.sum(s * t, -1) / jnp.sqrt(jnp.maximum(jnp.sum(s * s, -1) * jnp.sum(t * t, -1), eps ** 2))
    mask = mask.astype(bool)
    return jnp.sum(jnp.where(mask, 1.0 - cos, 0.0)), jnp.sum(mask)


def logit_mse_sums(student_logits, teacher_logits, mask):
    """Σ over selected tokens of Σ_vocab (s − t)², and their count (MSELoss(sum) / N in the reference)."""
    diff = student_logits.astype(jnp.float32) - teacher_logits.astype(jnp.float32)
    mask = mask.astype(bool)
    return jnp.sum(jnp.where(mask[..., None], diff * diff, 0.0)), jnp.sum(mask)


def chunked_soft_target_sums(student_logits, teacher_logits, student_hidden, teacher_hidden, mask,
                             temperature: float, chunk: int, mse: bool = False) -> dict:
    """{"ce": (Σ soft_target_kl, count)[, "mse": (Σ logit_mse, count)]} over the tokens `mask`
    selects, the vocabulary logits (`student_logits(hidden)`, `teacher_logits(hidden)`) made
    `chunk` tokens at a time and made again in the backward pass (jax.checkpoint), so no
    [tokens, vocabulary] array is ever whole: what bounds a distillation step's memory otherwise.
    The same sums as soft_target_kl_sums and logit_mse_sums on whole logits, in another order."""
    width = student_hidden.shape[-1]
    flat = [student_hidden.reshape(-1, width), teacher_hidden.reshape(-1, teacher_hidden.shape[-1]),
            mask.reshape(-1).astype(bool)]
    spare = -flat[0].shape[0] % chunk  # padding tokens, out of the mask
    flat = [jnp.pad(x, [(0, spare)] + [(0, 0)] * (x.ndim - 1)) for x in flat]
    chunks = [x.reshape(-1, chunk, *x.shape[1:]) for x in flat]

    @jax.checkpoint
    def one_chunk(sums, xs):
        s_hidden, t_hidden, selected = xs
        s, t = student_logits(s_hidden), teacher_logits(t_hidden)
        kl = soft_target_kl_sums(s, t, selected, temperature)[0]
        squared = logit_mse_sums(s, t, selected)[0] if mse else 0.0
        return (sums[0] + kl, sums[1] + squared), None

    (kl, squared), _ = jax.lax.scan(one_chunk, (jnp.float32(0), jnp.float32(0)), chunks)
    count = jnp.sum(mask.astype(bool))
    return {"ce": (kl, count), **({"mse": (squared, count)} if mse else {})}


def distillation_loss(student_logits, teacher_logits, student_hidden, teacher_hidden,
                      attention_mask, mlm_labels, *, temperature: float, alpha_ce: float,
                      alpha_mlm: float, alpha_cos: float, alpha_mse: float = 0.0,
                      restrict_ce_to_mask: bool = False, hidden_mask=None, soft_sums=None):
    """α_ce·L_ce + α_mlm·L_mlm + α_cos·L_cos (+ α_mse·L_mse), each a mean over its tokens.

    L_ce and L_mse cover every real token (or only the MLM targets with restrict_ce_to_mask), L_cos
    every real token, L_mlm the MLM targets. `hidden_mask` marks the real tokens of the hidden
    states when they are laid out differently from `attention_mask` (packed rows). `soft_sums`
    (from chunked_soft_target_sums) gives L_ce's and L_mse's sums ready made; the logits are then
    the student's at the MLM targets only, `mlm_labels` theirs.
    Returns (loss, {term name: value}).
    """
    real = attention_mask.astype(bool)
    ce_mask = (mlm_labels != IGNORE_INDEX) if restrict_ce_to_mask else real
    terms = {}
    if alpha_ce:
        total, count = (soft_sums["ce"] if soft_sums else
                        soft_target_kl_sums(student_logits, teacher_logits, ce_mask, temperature))
        terms["ce"] = total / jnp.maximum(count, 1)
    if alpha_mlm:
        total, count = cross_entropy_sums(student_logits, mlm_labels)
        terms["mlm"] = total / jnp.maximum(count, 1)
    if alpha_cos:
        total, count = cosine_sums(student_hidden, teacher_hidden,
                                   real if hidden_mask is None else hidden_mask)
        terms["cos"] = total / jnp.maximum(count, 1)
    if alpha_mse:
        total, count = (soft_sums["mse"] if soft_sums else
                        logit_mse_sums(student_logits, teacher_logits, ce_mask))
        terms["mse"] = total / jnp.maximum(count, 1)
    weights = {"ce": alpha_ce, "mlm": alpha_mlm, "cos": alpha_cos, "mse": alpha_mse}
    loss = sum(weights[name] * value for name, value in terms.items())
    return loss, terms


def task_distillation_loss(head: str, student_out, teacher_out, attention_mask, temperature: float,
                           problem_type: str | None = None):
    """The second distillation step's soft-target term for a task head (the paper's DistilBERT (D)).

    Classification and multiple choice: T²·KL(teacher ‖ student) on the logits, batch mean;
    regression: MSE between the two predictions; token classification: the per-token KL over real
    tokens; question answering: the mean of the start and end KLs (run_squad_w_distillation).
    """
    def kl(s, t, mask):
        total, count = soft_target_kl_sums(s, t, mask, temperature)
        return total / jnp.maximum(count, 1)

    if head == "question_answering":
        mask = attention_mask.astype(bool)
        # positions outside the window must not take probability: mask them out of both softmaxes
        s_start, t_start, s_end, t_end = (jnp.where(mask, x.astype(jnp.float32), -1e9) for x in (
            student_out.start_logits, teacher_out.start_logits, student_out.end_logits,
            teacher_out.end_logits))
        rows = jnp.ones(mask.shape[:1], bool)
        return (kl(s_start, t_start, rows) + kl(s_end, t_end, rows)) / 2
    s, t = student_out.logits, teacher_out.logits
    if head == "token_classification":
        return kl(s, t, attention_mask)
    if head == "sequence_classification" and problem_type == "regression":
        return jnp.mean((s.astype(jnp.float32) - t.astype(jnp.float32)) ** 2)
    return kl(s, t, jnp.ones(s.shape[:1], bool))
