"""The next-passage test (in the spirit of ChapterBreak, Sun et al. 2022): does the model know
what comes next in the novel, beyond the next few words?

From the novel's held-out slice (never trained on): a context of ~1,000 tokens that ends at a
sentence end, and six candidate continuations of 100 tokens, each starting at a sentence start:
the true one and five from elsewhere in the held-out slice (never overlapping the context or the
true continuation). The model picks the candidate it finds most likely after the context; its
accuracy over the items is the figure (chance: 1/6). Likelihoods only, no generation: the
context is read once and its cache shared by the six candidates.
"""
import random
from dataclasses import asdict, dataclass

import torch

from chateau.discriminator import wilson
from chateau.generation import SENTENCE_END

CONTEXT_TOKENS = 1000
CANDIDATE_TOKENS = 100
CANDIDATES = 6  # the true continuation and five others: chance is 1/6


@dataclass
class Item:
    context: list      # token ids, BOS first where the tokenizer has one
    candidates: list   # CANDIDATES lists of candidate_tokens ids each
    answer: int        # index of the true continuation


def sentence_starts(tokenizer, text):
    """(ids, token indices where a sentence starts) of `text` tokenized once."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    chars = [m.end() for m in SENTENCE_END.finditer(text)]
    starts, t = [], 0
    for c in chars:
        while t < len(offsets) and offsets[t][1] <= c:  # the first token that ends after the sentence start
            t += 1
        if t < len(ids):
            starts.append(t)
    return ids, sorted(set(starts))


def build_items(tokenizer, text, n_items, context_tokens=CONTEXT_TOKENS, candidate_tokens=CANDIDATE_TOKENS,
                n_candidates=CANDIDATES, seed=0):
    """Up to `n_items` items from `text`, their true continuations evenly spread over it."""
    ids, starts = sentence_starts(tokenizer, text)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    fits = [s for s in starts if s + candidate_tokens <= len(ids)]
    eligible = [s for s in fits if s >= context_tokens]
    rng = random.Random(seed)
    items = []
    for k in range(min(n_items, len(eligible))):
        s = eligible[len(eligible) * k // min(n_items, len(eligible))]
        others = [d for d in fits if d + candidate_tokens <= s - context_tokens or d >= s + candidate_tokens]
        if len(others) < n_candidates - 1:
            continue
        chosen = [s] + rng.sample(others, n_candidates - 1)
        rng.shuffle(chosen)
        items.append(Item(context=bos + ids[s - context_tokens:s],
                          candidates=[ids[d:d + candidate_tokens] for d in chosen], answer=chosen.index(s)))
    return items


@torch.no_grad()
def candidate_log_likelihoods(model, item):
    """Summed log-probability of each candidate after the item's context (all the same length,
    so the sums compare like for like)."""
    device = next(model.parameters()).device
    context = torch.tensor([item.context], device=device)
    out = model(input_ids=context, use_cache=True)
    cache = out.past_key_values
    cache.batch_repeat_interleave(len(item.candidates))  # the context's keys/values, once per candidate
    candidates = torch.tensor(item.candidates, device=device)
    mask = torch.ones(len(item.candidates), context.shape[1] + candidates.shape[1], dtype=torch.long, device=device)
    logits = model(input_ids=candidates, past_key_values=cache, attention_mask=mask).logits
    logits = torch.cat([out.logits[:, -1:].expand(len(item.candidates), 1, -1), logits[:, :-1]], dim=1).float()
    return torch.log_softmax(logits, -1).gather(-1, candidates.unsqueeze(-1)).squeeze(-1).sum(-1).tolist()


@dataclass
class NextPassage:
    accuracy: float | None  # None when the held-out slice holds no item
    low: float | None       # 95% Wilson interval
    high: float | None
    items: int
    candidates: int
    context_tokens: int
    candidate_tokens: int

    def as_dict(self):
        return asdict(self)

    def __str__(self):
        if not self.items:
            return "no item (the held-out slice is shorter than a context and six candidates)"
        return (f"{self.accuracy:.2f} [{self.low:.2f}, {self.high:.2f}] over {self.items} items "
                f"(chance {1 / self.candidates:.2f}; {self.context_tokens}-token contexts)")


def score(model, items, context_tokens=CONTEXT_TOKENS, candidate_tokens=CANDIDATE_TOKENS, n_candidates=CANDIDATES):
    """The model's accuracy over the items, with its 95% interval."""
    was_training = model.training
    model.eval()
    correct = 0
    for item in items:
        likelihoods = candidate_log_likelihoods(model, item)
        correct += max(range(len(likelihoods)), key=likelihoods.__getitem__) == item.answer
    model.train(was_training)
    if not items:
        return NextPassage(None, None, None, 0, n_candidates, context_tokens, candidate_tokens)
    low, high = wilson(correct, len(items))
    return NextPassage(round(correct / len(items), 3), round(low, 3), round(high, 3), len(items), n_candidates,
                       context_tokens, candidate_tokens)
